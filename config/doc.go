// Package config reads imapgate's YAML configuration file, checks it, and builds from it what
// the other packages take: listener options for the proxy, the routing table specification,
// TLS configurations and the logger.
//
// It is a top-level package, outside proxy, routing and tlsconf, because none of them owns
// the configuration: it is one validated snapshot that feeds all three, and later the admin
// API and configuration reload, which swap a whole snapshot at once. Keeping it apart also
// keeps YAML out of the data path: proxy and routing take plain Go values and never read a
// file.
//
// Usage:
//
//	cfg, err := config.Load("/etc/imapgate/imapgate.yaml")
//	if err != nil {
//		return err // "imapgate.yaml:7: listeners[1].tls: unknown TLS mode …"
//	}
//	log, err := cfg.Logger()
//	spec, err := cfg.RoutingSpec()          // reads backend CA files
//	table, err := routing.NewTable(spec)
//	listeners, err := cfg.Listeners()       // reads the server certificate
//	srv := proxy.New(cfg.ProxyOptions(&routing.Static{Table: table}, log))
//	adm, err := cfg.AdminAPI()              // nil without an "admin" section; reads token_file
//	for _, l := range listeners {
//		ln, err := net.Listen("tcp", l.Address)
//		go srv.Serve(ln, l.Options)
//	}
//
// Load and Parse check everything that can be checked without touching the file system or
// the network: unknown fields, types, listener and backend addresses, TLS modes, shard
// references, log settings. Every error names the file, the line and the field, as in
// `imapgate.yaml:7: listeners[1].tls: unknown TLS mode "tls" (want none, starttls or
// implicit)`. The builders (Listeners, RoutingSpec, AdminAPI, Logger) are the part that reads
// certificate, CA and token files; their errors name the field too. Relative file paths in the
// configuration are relative to the directory of the configuration file.
//
// The package does not watch the file, reload it, or listen on anything.
package config
