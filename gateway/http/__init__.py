"""The HTTP edge: the routes (tickets, admin, health, openapi, scrape), the two middlewares, the
standard error response and the runner that serves it all. The only package that imports
`aiohttp.web`: below it the core raises domain errors (gateway.contract.GatewayError,
gateway.store.base.StoreUnavailable and StoreFull), rendered here once. May import everything
below it; nothing below imports it."""
