"""The parents' page: an optional web page served by the daemon itself (aiohttp, in the daemon's event loop)."""
