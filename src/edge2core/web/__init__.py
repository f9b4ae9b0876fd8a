"""The people's side: the operations dashboard (served by the core) and the shopper and staff
pages (served by each edge site), with their templates and built browser assets.

Pages are server-rendered Jinja2 templates with htmx; charts are uPlot and the shopper page
talks MQTT over WebSockets with MQTT.js. Those libraries are vendored from npm (`frontend/`,
`make assets`) into `static/vendor/` and served from this package: sites are often offline.
"""
