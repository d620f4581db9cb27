"""The migration console's core (docs/console.md): the page's data built from what the report,
the rollout, the guardrails and the shadow compare already expose (`model`), the burndown chart
as SVG (`chart`), and the signed sign-in cookie (`signin`). Pure: nothing here imports
aiohttp.web or reads a lock of the request path; gateway/http/console.py serves it, and the
templates and the stylesheet beside this file are package data."""
