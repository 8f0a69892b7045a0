// Package proxy is imapgate's data path: it accepts IMAP client connections, runs the
// conversation up to login itself, logs in to the user's backend and then splices the two
// byte streams.
//
// The path of one session, file by file:
//
//	server.go   accept: Server.Serve takes connections from a listener; the session registry
//	workers.go  session goroutines run on reused goroutines, whose stacks have grown already
//	sock.go     the sockets: Listen's listener and the backend dial make them with raw
//	            system calls (no wake-ups of the runtime's sysmon); closes are batched
//	session.go  one session's life (run), implicit TLS, login orchestration, handoff
//	preauth.go  pre-auth: the not-authenticated state of RFC 9051 section 3.1 — CAPABILITY,
//	            NOOP, LOGOUT, ID (RFC 2971), STARTTLS, LOGIN, AUTHENTICATE PLAIN (RFC 4616,
//	            SASL-IR RFC 4959) — answered by the proxy, written by hand on bufio
//	parse.go    the client command reader: quoted strings, literals {n} and {n+} (RFC 7888),
//	            bounded line and literal sizes
//	(routing)   route: the Router interface (api.go) asks package routing for shard and backends
//	upstream.go upstream login: dial, TLS or STARTTLS, CAPABILITY, ID forwarding of the client
//	            address (Dovecot's x-originating-ip), AUTHENTICATE PLAIN or LOGIN
//	proxyproto.go the PROXY protocol header (v1 or v2) with the client's address, sent first
//	            on the backend connection where the backend wants one; v2 also says
//	            whether the client used TLS (PP2_TYPE_SSL) and the name it asked for
//	response.go the backend response reader used by the upstream login
//	splice.go   splice: raw bytes both ways, one flow per direction, copied by a goroutine
//	            where a side is TLS (or observed): short messages through a pooled buffer,
//	            bulk bursts to a TLS side with their records gathered into one write, bulk
//	            bursts between plain TCP by splice(2) where no loop copies them
//	rawio.go    the system calls under it: non-blocking reads and writes through
//	            RawSyscall, waits in the runtime's poller, pooled pipes, TLS without blocking
//	dormant.go  the dormancy loops (an epoll instance and a goroutine per core): a flow
//	            silent for Options.DormantAfter hands its wait to one and its goroutine ends,
//	            so an idle session holds no goroutine; a sweeper finds quiet flows in its own
//	            registry of running ones, never under Server.mu
//	inline.go   between plain sockets the loops copy the bytes themselves, bulk data included:
//	            a flow whose destination is full waits in its loop for EPOLLOUT, with no
//	            goroutine
//	keepalive.go TCP keepalive: once on the listening socket (inherited), per backend dial
//	observe.go  the optional traffic observer (commands, IDLE, timings) on the copied bytes
//
// After the handoff the proxy does not parse IMAP: bytes the client pipelined after its LOGIN
// and bytes the backend sent after its OK are delivered first, then the streams are copied
// unchanged. The client receives the backend's own tagged OK under its tag, with the
// backend's post-login capabilities.
//
// What this package does not do: it does not decide where a user goes (package routing),
// does not verify passwords itself (the backend does; pass-through authentication), does not
// load configuration (package config) or certificates (package tlsconf).
//
// Connection ownership: a Server owns every connection it accepts. Until the handoff the
// session goroutine that serves it owns it and the backend connection it dialed. From the
// handoff the splice owns both: it closes them when a flow ends with an error or at the
// backend's EOF, or when both flows have ended; a dormant flow is owned by nobody until a
// dormancy loop takes it on an event (to copy it inline, or to hand it a new goroutine) or
// the session's close wakes it, or the loop whose flow's end closed the session ends it
// (flow.state settles who, inline.go). Other goroutines
// (Server.Close, Kick) only interrupt a session: before login it answers BYE, after login
// both connections are closed and dormant flows are woken to see it.
package proxy
