package tlsconf

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
)

// upstreamSessionCache is how many TLS sessions to each backend configuration are kept for
// resumption: a proxy opens many connections to few backends, and resumption saves a full
// handshake on each.
const upstreamSessionCache = 256

// UpstreamConfig returns the configuration used to reach a backend over TLS (STARTTLS or
// implicit).
//
// caFile names a PEM bundle of the certificate authorities trusted for this backend; empty
// means the system roots. serverName is the name the backend's certificate must carry (a DNS
// name or an IP address); callers set it to the host part of the backend address when the
// configuration does not say otherwise, because a tls.Config used with tls.Client does not
// fill it in. insecureSkipVerify turns certificate verification off: the connection is then
// encrypted but not authenticated, and any machine in the path can read the users' passwords.
// Verification is on unless it is asked for explicitly.
func UpstreamConfig(caFile, serverName string, insecureSkipVerify bool) (*tls.Config, error) {
	cfg := &tls.Config{
		MinVersion:         MinVersion,
		ServerName:         serverName,
		InsecureSkipVerify: insecureSkipVerify,
		ClientSessionCache: tls.NewLRUClientSessionCache(upstreamSessionCache),
	}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("tlsconf: CA file: %w", err)
		}
		pool, err := CertPool(pem)
		if err != nil {
			return nil, fmt.Errorf("tlsconf: CA file %s: %w", caFile, err)
		}
		cfg.RootCAs = pool
	}
	return cfg, nil
}

// CertPool returns a pool trusting every certificate in certPEM, such as the certificate
// SelfSigned returns or a CA bundle. It fails when certPEM holds no certificate.
func CertPool(certPEM []byte) (*x509.CertPool, error) {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(certPEM) {
		return nil, fmt.Errorf("no PEM certificate found")
	}
	return pool, nil
}
