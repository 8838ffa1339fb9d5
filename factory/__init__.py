"""The site factory: run in user space at each site, it keeps the batch queue topped up with
generic pilots, as many as the matchmaker's demand for the site's pilot shapes can use. The top-up
policy is a pure function (`policy`), one loop per site applies it (`site`) through the site's
batch plugin, `health` backs off from a failing site, `matchmaker` is its HTTP client, and
`service` runs the loops."""
