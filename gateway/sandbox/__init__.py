"""The simulated new API: `data` holds the demo patients, `app` serves them with fault knobs."""
