package admin

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/imapgate/imapgate/proxy"
	"github.com/imapgate/imapgate/routing"
	"github.com/imapgate/imapgate/tlsconf"
	"go.uber.org/zap"
)

// Proxy is what the API asks of the proxy; *proxy.Server implements it.
type Proxy interface {
	// Sessions returns a snapshot of the live sessions.
	Sessions() []proxy.SessionInfo
	// Kick ends the logged-in sessions match accepts and returns how many.
	Kick(match func(proxy.SessionInfo) bool) int
	// Trace logs user's IMAP traffic until the given time; the zero time ends a trace.
	Trace(user string, until time.Time)
}

// Router answers GET /api/v1/route; *routing.Table implements it. Lookup must have no side
// effects: the API calls it for any user an operator names.
type Router interface {
	Lookup(user string) (routing.Decision, error)
}

var (
	_ Proxy  = (*proxy.Server)(nil)
	_ Router = (*routing.Table)(nil)
)

// Check is one condition of GET /readyz.
type Check struct {
	// Name identifies the check in the response ("listeners", "routing").
	Name string
	// Ready returns nil when the condition holds, else an error saying why not. It must be
	// quick and safe for concurrent use.
	Ready func() error
}

// Options configure a Server. Every field may be left zero: the endpoints whose source is
// missing answer 501 Not Implemented.
type Options struct {
	// Proxy serves the session list, kick and trace.
	Proxy Proxy
	// Router serves the routing look-up.
	Router Router
	// Metrics serves GET /metrics.
	Metrics *Metrics
	// Checks are the conditions of GET /readyz, all of which must hold. None means ready.
	Checks []Check
	// Token, when not empty, is required on every request as "Authorization: Bearer
	// <Token>".
	Token string
	// Logger receives one line per state-changing request (kick, trace), warnings for
	// refused credentials, and debug lines for the rest. Nil means zap.NewNop(). The token is
	// never logged.
	Logger *zap.Logger
}

// Limits.
const (
	// maxBodyBytes bounds a POST body.
	maxBodyBytes = 64 << 10
	// DefaultTraceMinutes is a trace's length when the request gives none.
	DefaultTraceMinutes = 10
	// MaxTraceMinutes bounds a trace's length: a forgotten trace must end by itself.
	MaxTraceMinutes = 24 * 60
)

// Server is the admin HTTP API. It is an http.Handler; Serve runs it on a listener with
// sane timeouts. Create it with New.
type Server struct {
	opts   Options
	log    *zap.Logger
	token  [sha256.Size]byte // hash of the token: compared in constant time, whatever its length
	routes map[string]route
	cop    *http.CrossOriginProtection
	hs     *http.Server
}

type route struct {
	method  string // GET routes accept HEAD too
	handler func(w http.ResponseWriter, r *http.Request)
}

// New returns a Server; it starts nothing until Serve is called.
func New(opts Options) *Server {
	s := &Server{opts: opts, log: opts.Logger, cop: http.NewCrossOriginProtection()}
	if s.log == nil {
		s.log = zap.NewNop()
	}
	s.token = sha256.Sum256([]byte(opts.Token))
	s.routes = map[string]route{
		"/metrics":         {http.MethodGet, s.metrics},
		"/healthz":         {http.MethodGet, s.healthz},
		"/readyz":          {http.MethodGet, s.readyz},
		"/api/v1/sessions": {http.MethodGet, s.sessions},
		"/api/v1/kick":     {http.MethodPost, s.kick},
		"/api/v1/route":    {http.MethodGet, s.route},
		"/api/v1/trace":    {http.MethodPost, s.trace},
	}
	s.hs = &http.Server{
		Handler:           s,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      60 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          zap.NewStdLog(s.log.Named("http")),
	}
	return s
}

// Serve answers requests on ln until Shutdown or Close, and then returns
// http.ErrServerClosed. It closes ln.
func (s *Server) Serve(ln net.Listener) error { return s.hs.Serve(ln) }

// Shutdown stops accepting requests and waits for those in progress until ctx is done.
func (s *Server) Shutdown(ctx context.Context) error { return s.hs.Shutdown(ctx) }

// Close stops the server at once, closing every connection.
func (s *Server) Close() error { return s.hs.Close() }

// ServeHTTP implements http.Handler: authentication first (so that without the token
// nothing, not even which paths exist, is revealed), then the route.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !s.authorized(w, r) {
		return
	}
	rt, ok := s.routes[r.URL.Path]
	if !ok {
		writeError(w, http.StatusNotFound, fmt.Sprintf("no such endpoint %s (see GET /metrics, /healthz, /readyz, /api/v1/sessions, /api/v1/route; POST /api/v1/kick, /api/v1/trace)", r.URL.Path))
		return
	}
	if r.Method != rt.method && !(rt.method == http.MethodGet && r.Method == http.MethodHead) {
		allow := rt.method
		if allow == http.MethodGet {
			allow = "GET, HEAD"
		}
		w.Header().Set("Allow", allow)
		writeError(w, http.StatusMethodNotAllowed, fmt.Sprintf("%s needs %s, not %s", r.URL.Path, rt.method, r.Method))
		return
	}
	if err := s.cop.Check(r); err != nil {
		s.log.Warn("admin: cross-origin request refused", zap.String("path", r.URL.Path),
			zap.String("remote", r.RemoteAddr), zap.String("origin", r.Header.Get("Origin")))
		writeError(w, http.StatusForbidden, "cross-origin request refused")
		return
	}
	s.log.Debug("admin request", zap.String("method", r.Method), zap.String("path", r.URL.Path),
		zap.String("query", r.URL.RawQuery), zap.String("remote", r.RemoteAddr))
	rt.handler(w, r)
}

// authorized checks the bearer token (RFC 6750 section 2.1), answering 401 when it is
// missing or wrong.
func (s *Server) authorized(w http.ResponseWriter, r *http.Request) bool {
	if s.opts.Token == "" {
		return true
	}
	scheme, cred, _ := strings.Cut(r.Header.Get("Authorization"), " ")
	cred = strings.TrimSpace(cred)
	if !strings.EqualFold(scheme, "Bearer") || cred == "" {
		w.Header().Set("WWW-Authenticate", `Bearer realm="imapgate"`)
		writeError(w, http.StatusUnauthorized, "this admin API needs a token: send the header \"Authorization: Bearer <token>\" with the contents of admin.token_file")
		return false
	}
	got := sha256.Sum256([]byte(cred))
	if subtle.ConstantTimeCompare(got[:], s.token[:]) != 1 {
		s.log.Warn("admin: wrong token", zap.String("path", r.URL.Path), zap.String("remote", r.RemoteAddr))
		w.Header().Set("WWW-Authenticate", `Bearer realm="imapgate", error="invalid_token"`)
		writeError(w, http.StatusUnauthorized, "wrong token")
		return false
	}
	return true
}

func (s *Server) metrics(w http.ResponseWriter, r *http.Request) {
	if s.opts.Metrics == nil {
		writeError(w, http.StatusNotImplemented, "metrics are not kept by this server")
		return
	}
	s.opts.Metrics.Handler().ServeHTTP(w, r)
}

func (s *Server) healthz(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

// ReadyResponse is the body of GET /readyz.
type ReadyResponse struct {
	// Status is "ready" or "not ready".
	Status string `json:"status"`
	// Checks maps each check's name to "ok" or why it fails.
	Checks map[string]string `json:"checks"`
}

func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	resp := ReadyResponse{Status: "ready", Checks: make(map[string]string, len(s.opts.Checks))}
	code := http.StatusOK
	for _, c := range s.opts.Checks {
		if err := c.Ready(); err != nil {
			resp.Checks[c.Name] = err.Error()
			resp.Status, code = "not ready", http.StatusServiceUnavailable
		} else {
			resp.Checks[c.Name] = "ok"
		}
	}
	writeJSON(w, code, resp)
}

// sessionFilters are the query parameters of GET /api/v1/sessions.
var sessionFilters = []string{"user", "shard", "backend", "listener"}

func (s *Server) sessions(w http.ResponseWriter, r *http.Request) {
	if s.opts.Proxy == nil {
		writeError(w, http.StatusNotImplemented, "no proxy behind this admin API")
		return
	}
	q, err := query(r, sessionFilters...)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	list := s.opts.Proxy.Sessions()
	out := make([]proxy.SessionInfo, 0, len(list))
	for _, si := range list {
		if f, ok := q["user"]; ok && !strings.EqualFold(si.User, f) {
			continue
		}
		if f, ok := q["shard"]; ok && si.Shard != f {
			continue
		}
		if f, ok := q["backend"]; ok && !strings.EqualFold(si.Backend, f) {
			continue
		}
		if f, ok := q["listener"]; ok && si.Listener != f {
			continue
		}
		out = append(out, si)
	}
	slices.SortFunc(out, func(a, b proxy.SessionInfo) int {
		if c := a.Start.Compare(b.Start); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	writeJSON(w, http.StatusOK, out)
}

// KickRequest is the body of POST /api/v1/kick: exactly one field is set.
type KickRequest struct {
	// User ends that user's sessions (compared case-insensitively).
	User string `json:"user,omitempty"`
	// Backend ends the sessions on that backend address (host:port as configured).
	Backend string `json:"backend,omitempty"`
	// Shard ends the sessions on every backend of that shard.
	Shard string `json:"shard,omitempty"`
	// Session ends the session with that id (as in logs and GET /api/v1/sessions).
	Session string `json:"session,omitempty"`
}

// KickResponse is the answer to POST /api/v1/kick.
type KickResponse struct {
	// Kicked is how many sessions were ended.
	Kicked int `json:"kicked"`
}

func (s *Server) kick(w http.ResponseWriter, r *http.Request) {
	if s.opts.Proxy == nil {
		writeError(w, http.StatusNotImplemented, "no proxy behind this admin API")
		return
	}
	var req KickRequest
	if err := decodeBody(w, r, &req); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	var field, value string
	var match func(proxy.SessionInfo) bool
	set := 0
	for _, f := range []struct {
		name, value string
		match       func(proxy.SessionInfo) bool
	}{
		{"user", req.User, func(si proxy.SessionInfo) bool { return strings.EqualFold(si.User, req.User) }},
		{"backend", req.Backend, func(si proxy.SessionInfo) bool { return strings.EqualFold(si.Backend, req.Backend) }},
		{"shard", req.Shard, func(si proxy.SessionInfo) bool { return si.Shard == req.Shard }},
		{"session", req.Session, func(si proxy.SessionInfo) bool { return si.ID == req.Session }},
	} {
		if f.value != "" {
			set++
			field, value, match = f.name, f.value, f.match
		}
	}
	if set != 1 {
		writeError(w, http.StatusBadRequest, `give exactly one of "user", "backend", "shard" or "session", such as {"user": "alice@example.com"}`)
		return
	}
	n := s.opts.Proxy.Kick(match)
	s.log.Info("admin: kick", zap.String(field, value), zap.Int("kicked", n), zap.String("remote", r.RemoteAddr))
	writeJSON(w, http.StatusOK, KickResponse{Kicked: n})
}

// RouteResponse is the answer to GET /api/v1/route.
type RouteResponse struct {
	// User is the user name asked about.
	User string `json:"user"`
	// Shard is the user's shard.
	Shard string `json:"shard"`
	// Reason tells how the shard was found: "user", "domain", "wildcard" or "hash".
	Reason string `json:"reason"`
	// UpstreamUser is the name used on the backend when it differs from User.
	UpstreamUser string `json:"upstream_user,omitempty"`
	// Backends are the shard's backends that are up, in the order the user tries them.
	Backends []RouteBackend `json:"backends"`
}

// RouteBackend is one backend of a RouteResponse.
type RouteBackend struct {
	Address         string       `json:"address"`
	TLS             tlsconf.Mode `json:"tls"`
	ForwardClientIP bool         `json:"forward_client_ip"`
	// ProxyProtocol is the PROXY protocol header sent first: "off", "v1" or "v2".
	ProxyProtocol routing.ProxyProtocol `json:"proxy_protocol"`
}

// RouteError is the body of a 503 from GET /api/v1/route: the user's shard (when known)
// has no backend up.
type RouteError struct {
	Error string `json:"error"`
	User  string `json:"user"`
	Shard string `json:"shard,omitempty"`
}

func (s *Server) route(w http.ResponseWriter, r *http.Request) {
	if s.opts.Router == nil {
		writeError(w, http.StatusNotImplemented, "no routing table behind this admin API")
		return
	}
	q, err := query(r, "user")
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	user := q["user"]
	if user == "" {
		writeError(w, http.StatusBadRequest, "missing ?user=: the login name to route, such as ?user=alice@example.com")
		return
	}
	dec, err := s.opts.Router.Lookup(user)
	var ue *routing.UnavailableError
	switch {
	case errors.As(err, &ue):
		writeJSON(w, http.StatusServiceUnavailable, RouteError{Error: err.Error(), User: user, Shard: ue.Shard})
		return
	case err != nil:
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	resp := RouteResponse{User: user, Shard: dec.Shard, Reason: dec.Reason, UpstreamUser: dec.UpstreamUser,
		Backends: make([]RouteBackend, 0, len(dec.Backends))}
	for _, b := range dec.Backends {
		resp.Backends = append(resp.Backends, RouteBackend{Address: b.Address, TLS: b.TLS, ForwardClientIP: b.ForwardClientIP,
			ProxyProtocol: b.ProxyProtocol})
	}
	writeJSON(w, http.StatusOK, resp)
}

// TraceRequest is the body of POST /api/v1/trace.
type TraceRequest struct {
	// User is the login name whose sessions are traced (compared case-insensitively).
	User string `json:"user"`
	// Minutes is how long the trace lasts, from 1 to MaxTraceMinutes; nil means
	// DefaultTraceMinutes, 0 ends the user's trace now.
	Minutes *int `json:"minutes,omitempty"`
}

// TraceResponse is the answer to POST /api/v1/trace.
type TraceResponse struct {
	User string `json:"user"`
	// Until is when the trace ends; absent when the request ended it.
	Until *time.Time `json:"until,omitempty"`
	// Stopped is true when the request ended the trace.
	Stopped bool `json:"stopped,omitempty"`
}

func (s *Server) trace(w http.ResponseWriter, r *http.Request) {
	if s.opts.Proxy == nil {
		writeError(w, http.StatusNotImplemented, "no proxy behind this admin API")
		return
	}
	var req TraceRequest
	if err := decodeBody(w, r, &req); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	if req.User == "" {
		writeError(w, http.StatusBadRequest, `missing "user", such as {"user": "alice@example.com", "minutes": 10}`)
		return
	}
	minutes := DefaultTraceMinutes
	if req.Minutes != nil {
		minutes = *req.Minutes
	}
	if minutes < 0 || minutes > MaxTraceMinutes {
		writeError(w, http.StatusBadRequest, fmt.Sprintf(`"minutes" must be from 1 to %d (0 ends the trace), got %d`, MaxTraceMinutes, minutes))
		return
	}
	if minutes == 0 {
		s.opts.Proxy.Trace(req.User, time.Time{})
		s.log.Info("admin: trace stopped", zap.String("user", req.User), zap.String("remote", r.RemoteAddr))
		writeJSON(w, http.StatusOK, TraceResponse{User: req.User, Stopped: true})
		return
	}
	until := time.Now().Add(time.Duration(minutes) * time.Minute).Truncate(time.Second)
	s.opts.Proxy.Trace(req.User, until)
	s.log.Info("admin: trace started", zap.String("user", req.User), zap.Time("until", until),
		zap.String("remote", r.RemoteAddr))
	writeJSON(w, http.StatusOK, TraceResponse{User: req.User, Until: &until})
}

// query returns the request's query parameters, refusing names outside allowed and
// parameters given twice.
func query(r *http.Request, allowed ...string) (map[string]string, error) {
	vals, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		return nil, fmt.Errorf("invalid query string: %v", err)
	}
	out := make(map[string]string, len(vals))
	for k, v := range vals {
		if !slices.Contains(allowed, k) {
			return nil, fmt.Errorf("unknown parameter %q (want %s)", k, orList(allowed))
		}
		if len(v) > 1 {
			return nil, fmt.Errorf("parameter %q given %d times", k, len(v))
		}
		out[k] = v[0]
	}
	return out, nil
}

// decodeBody decodes one JSON object from the request body into v, refusing unknown
// fields, trailing data and bodies over maxBodyBytes.
func decodeBody(w http.ResponseWriter, r *http.Request, v any) error {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBodyBytes))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var mbe *http.MaxBytesError
		switch {
		case errors.Is(err, io.EOF):
			return errors.New("empty body: send a JSON object")
		case errors.As(err, &mbe):
			return fmt.Errorf("body larger than %d bytes", maxBodyBytes)
		}
		return fmt.Errorf("invalid JSON body: %v", strings.TrimPrefix(err.Error(), "json: "))
	}
	if dec.More() {
		return errors.New("invalid JSON body: data after the object")
	}
	return nil
}

// errorBody is every error's body.
type errorBody struct {
	Error string `json:"error"`
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, errorBody{Error: msg})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// orList formats ["a", "b", "c"] as "a, b or c".
func orList(list []string) string {
	if len(list) == 1 {
		return list[0]
	}
	return strings.Join(list[:len(list)-1], ", ") + " or " + list[len(list)-1]
}
