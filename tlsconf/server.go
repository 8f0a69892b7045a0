package tlsconf

import (
	"crypto/tls"
	"fmt"
	"os"
)

// MinVersion is the oldest TLS version imapgate speaks on either side. RFC 8996 deprecates
// TLS 1.0 and 1.1; RFC 8314 section 4.1 asks mail clients and servers for TLS 1.2 or later.
const MinVersion = tls.VersionTLS12

// ServerConfig loads the certificate chain in certFile and its private key in keyFile (both
// PEM) and returns the configuration offered to clients on STARTTLS and implicit-TLS
// listeners. Errors name the file that could not be read or did not parse.
//
// The certificate is loaded once: replacing the files on disk has no effect on the returned
// configuration (reload comes later).
func ServerConfig(certFile, keyFile string) (*tls.Config, error) {
	if certFile == "" || keyFile == "" {
		return nil, fmt.Errorf("tlsconf: server certificate needs both a certificate file and a key file (got %q and %q)", certFile, keyFile)
	}
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return nil, fmt.Errorf("tlsconf: certificate: %w", err)
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, fmt.Errorf("tlsconf: key: %w", err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("tlsconf: certificate %s with key %s: %w", certFile, keyFile, err)
	}
	return serverConfig(cert), nil
}

// serverConfig is the one place the client-facing settings are chosen.
func serverConfig(cert tls.Certificate) *tls.Config {
	return &tls.Config{
		MinVersion:   MinVersion,
		Certificates: []tls.Certificate{cert},
	}
}
