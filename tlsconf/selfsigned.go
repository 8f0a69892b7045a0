package tlsconf

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"time"
)

// SelfSignedValidity is how long a certificate made by SelfSigned is valid.
const SelfSignedValidity = 365 * 24 * time.Hour

// DefaultSelfSignedHosts are the names a self-signed certificate carries when SelfSigned is
// called without any.
var DefaultSelfSignedHosts = []string{"localhost", "127.0.0.1", "::1"}

// SelfSigned makes a new ECDSA P-256 key and a self-signed certificate for hosts, valid from
// an hour ago for SelfSignedValidity, and returns a server configuration using it together
// with the certificate in PEM. Hosts that parse as IP addresses become IP subject alternative
// names, the others DNS names; no hosts means DefaultSelfSignedHosts.
//
// It is meant for `imapgate demo` and tests: clients trust the certificate by loading certPEM
// (openssl s_client -CAfile, curl --cacert, CertPool). Never use it in production.
func SelfSigned(hosts ...string) (cfg *tls.Config, certPEM []byte, err error) {
	certPEM, keyPEM, err := SelfSignedPEM(hosts...)
	if err != nil {
		return nil, nil, err
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, nil, fmt.Errorf("tlsconf: self-signed certificate: %w", err)
	}
	return serverConfig(cert), certPEM, nil
}

// SelfSignedPEM is SelfSigned returning the certificate and its private key (PKCS #8) in PEM,
// for writing to files that ServerConfig loads.
func SelfSignedPEM(hosts ...string) (certPEM, keyPEM []byte, err error) {
	if len(hosts) == 0 {
		hosts = DefaultSelfSignedHosts
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("tlsconf: self-signed certificate: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, nil, fmt.Errorf("tlsconf: self-signed certificate: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{Organization: []string{"imapgate self-signed"}, CommonName: hosts[0]},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(SelfSignedValidity),
		// The certificate is its own issuer, so it is marked as a CA that may sign
		// certificates: OpenSSL (curl --cacert, openssl s_client -CAfile) only treats a
		// certificate as self-issued when its key usage allows certificate signing.
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, fmt.Errorf("tlsconf: self-signed certificate: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("tlsconf: self-signed certificate: %w", err)
	}
	certPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM = pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	return certPEM, keyPEM, nil
}
