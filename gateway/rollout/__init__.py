"""Which side serves the old path: the flags and their pure rule (flags.py), the client that
forwards to the legacy service (legacy.py), shadow mode (shadow.py) and its pure compare of two
answers (compare.py). Imports the session service for shadow sessions; never the HTTP edge."""
