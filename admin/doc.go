// Package admin is imapgate's observability and operations surface: Prometheus metrics for
// the data path (Metrics, an implementation of proxy.Metrics) and an HTTP API (Server) that
// serves them together with health checks, the live session list, kick, routing look-ups and
// per-user traces. `imapgate ctl` is its command-line client.
//
// It is a top-level package because its role belongs to none of the others: it is an HTTP
// API over the proxy's session registry, the routing table and the metrics at once. proxy
// stays free of HTTP and Prometheus (it only calls the small proxy.Metrics interface),
// routing stays a pure table, and config only describes the admin listener.
//
// Usage:
//
//	metrics := admin.NewMetrics(admin.MetricsOptions{})
//	opts := cfg.ProxyOptions(router, log)
//	opts.Metrics = metrics
//	srv := proxy.New(opts)
//	api := admin.New(admin.Options{
//		Proxy:   srv,   // sessions, kick, trace
//		Router:  table, // *routing.Table: GET /api/v1/route
//		Metrics: metrics,
//		Checks:  []admin.Check{{Name: "listeners", Ready: listenersUp}},
//		Token:   token, // "" means no authentication
//		Logger:  log,
//	})
//	ln, _ := net.Listen("tcp", "127.0.0.1:9143")
//	go api.Serve(ln)
//	defer api.Close()
//
// The API (every response is JSON except /metrics; errors are {"error": "…"}):
//
//	GET  /metrics                      Prometheus text format
//	GET  /healthz                      200 while the process runs
//	GET  /readyz                       200 when every Check passes, else 503 naming the failures
//	GET  /api/v1/sessions              live sessions; filters ?user= ?shard= ?backend= ?listener=
//	POST /api/v1/kick                  {"user"|"backend"|"shard"|"session": "…"} → {"kicked": n}
//	GET  /api/v1/route?user=U          the routing decision for U, without side effects
//	POST /api/v1/trace                 {"user": "…", "minutes": 10} → {"user": …, "until": …}
//
// With a token, every request (/metrics and /healthz included) needs the header
// "Authorization: Bearer <token>"; others get 401 with a WWW-Authenticate challenge
// (RFC 6750 section 3). The token is compared in constant time and never logged. POST
// requests that a browser marks as cross-site are refused (http.CrossOriginProtection), so
// a web page cannot kick sessions through a loopback API without a token.
//
// What this package does not do: it does not listen on its own (Serve takes a listener), it
// does not read the configuration or the token file (package config does), and it keeps no
// state of its own besides the metrics: sessions, kicks and traces are the proxy's.
package admin
