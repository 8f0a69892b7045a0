package tlsconf

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// handshake runs a TLS handshake between server and client over an in-memory pipe and
// returns the client's error.
func handshake(t *testing.T, server, client *tls.Config) error {
	t.Helper()
	c1, c2 := net.Pipe()
	defer c1.Close()
	defer c2.Close()
	srv := tls.Server(c1, server)
	done := make(chan error, 1)
	go func() {
		err := srv.Handshake()
		c1.Close() // unblock the client when the server gives up
		done <- err
	}()
	err := tls.Client(c2, client).Handshake()
	c2.Close()
	<-done
	return err
}

func writeFile(t *testing.T, dir, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestSelfSigned(t *testing.T) {
	srv, certPEM, err := SelfSigned("mail.example.test", "127.0.0.1", "::1")
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(certPEM)
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if got := cert.DNSNames; len(got) != 1 || got[0] != "mail.example.test" {
		t.Errorf("DNSNames = %v", got)
	}
	if len(cert.IPAddresses) != 2 {
		t.Errorf("IPAddresses = %v", cert.IPAddresses)
	}
	if cert.PublicKeyAlgorithm != x509.ECDSA {
		t.Errorf("key algorithm = %v, want ECDSA", cert.PublicKeyAlgorithm)
	}
	if d := time.Until(cert.NotAfter); d < SelfSignedValidity-2*time.Hour || d > SelfSignedValidity {
		t.Errorf("valid for %v more, want about a year", d)
	}
	if srv.MinVersion != tls.VersionTLS12 {
		t.Errorf("MinVersion = %x", srv.MinVersion)
	}
	pool, err := CertPool(certPEM)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"mail.example.test", "127.0.0.1", "::1"} {
		if err := handshake(t, srv, &tls.Config{RootCAs: pool, ServerName: name}); err != nil {
			t.Errorf("handshake as %s: %v", name, err)
		}
	}
	var hostErr x509.HostnameError
	if err := handshake(t, srv, &tls.Config{RootCAs: pool, ServerName: "other.example.test"}); !errors.As(err, &hostErr) {
		t.Errorf("handshake with wrong name: %v, want a hostname error", err)
	}
	old := &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", MaxVersion: tls.VersionTLS11}
	if err := handshake(t, srv, old); err == nil {
		t.Error("TLS 1.1 client was accepted")
	}
}

func TestSelfSignedDefaultHosts(t *testing.T) {
	srv, certPEM, err := SelfSigned()
	if err != nil {
		t.Fatal(err)
	}
	pool, err := CertPool(certPEM)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range DefaultSelfSignedHosts {
		if err := handshake(t, srv, &tls.Config{RootCAs: pool, ServerName: name}); err != nil {
			t.Errorf("handshake as %s: %v", name, err)
		}
	}
}

func TestServerConfig(t *testing.T) {
	dir := t.TempDir()
	certPEM, keyPEM, err := SelfSignedPEM("localhost")
	if err != nil {
		t.Fatal(err)
	}
	otherCert, _, err := SelfSignedPEM("localhost")
	if err != nil {
		t.Fatal(err)
	}
	certFile := writeFile(t, dir, "cert.pem", certPEM)
	keyFile := writeFile(t, dir, "key.pem", keyPEM)
	otherFile := writeFile(t, dir, "other.pem", otherCert)
	garbage := writeFile(t, dir, "garbage.pem", []byte("not pem\n"))
	missing := filepath.Join(dir, "missing.pem")

	srv, err := ServerConfig(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	pool, _ := CertPool(certPEM)
	if err := handshake(t, srv, &tls.Config{RootCAs: pool, ServerName: "localhost"}); err != nil {
		t.Fatalf("handshake: %v", err)
	}

	for _, tc := range []struct {
		name, cert, key string
		want            []string
	}{
		{"missing cert", missing, keyFile, []string{missing}},
		{"missing key", certFile, missing, []string{missing}},
		{"garbage cert", garbage, keyFile, []string{garbage, keyFile}},
		{"garbage key", certFile, garbage, []string{certFile, garbage}},
		{"key of another certificate", otherFile, keyFile, []string{otherFile, keyFile}},
		{"empty names", "", "", []string{"both"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ServerConfig(tc.cert, tc.key)
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not name %q", err, w)
				}
			}
		})
	}
}

func TestUpstreamConfig(t *testing.T) {
	dir := t.TempDir()
	srv, certPEM, err := SelfSigned("backend.example.test", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	caFile := writeFile(t, dir, "ca.pem", certPEM)
	garbage := writeFile(t, dir, "garbage.pem", []byte("nothing here"))

	t.Run("verified with ca_file", func(t *testing.T) {
		cfg, err := UpstreamConfig(caFile, "backend.example.test", false)
		if err != nil {
			t.Fatal(err)
		}
		if cfg.InsecureSkipVerify || cfg.MinVersion != tls.VersionTLS12 || cfg.ClientSessionCache == nil {
			t.Errorf("unexpected config %+v", cfg)
		}
		if err := handshake(t, srv, cfg); err != nil {
			t.Error(err)
		}
	})
	t.Run("IP server name", func(t *testing.T) {
		cfg, err := UpstreamConfig(caFile, "127.0.0.1", false)
		if err != nil {
			t.Fatal(err)
		}
		if err := handshake(t, srv, cfg); err != nil {
			t.Error(err)
		}
	})
	t.Run("wrong server name", func(t *testing.T) {
		cfg, err := UpstreamConfig(caFile, "other.example.test", false)
		if err != nil {
			t.Fatal(err)
		}
		if err := handshake(t, srv, cfg); err == nil {
			t.Error("handshake succeeded with a wrong server name")
		}
	})
	t.Run("system roots by default", func(t *testing.T) {
		cfg, err := UpstreamConfig("", "backend.example.test", false)
		if err != nil {
			t.Fatal(err)
		}
		if cfg.RootCAs != nil {
			t.Error("RootCAs set without ca_file")
		}
		var unknown x509.UnknownAuthorityError
		if err := handshake(t, srv, cfg); !errors.As(err, &unknown) {
			t.Errorf("handshake: %v, want unknown authority", err)
		}
	})
	t.Run("insecure_skip_verify", func(t *testing.T) {
		cfg, err := UpstreamConfig("", "backend.example.test", true)
		if err != nil {
			t.Fatal(err)
		}
		if err := handshake(t, srv, cfg); err != nil {
			t.Error(err)
		}
	})
	for _, f := range []string{garbage, filepath.Join(dir, "missing.pem")} {
		if _, err := UpstreamConfig(f, "x", false); err == nil || !strings.Contains(err.Error(), f) {
			t.Errorf("UpstreamConfig(%s): error %v does not name the file", f, err)
		}
	}
}

func TestCertPoolEmpty(t *testing.T) {
	if _, err := CertPool(nil); err == nil {
		t.Error("CertPool(nil) succeeded")
	}
}

func TestModeRoundTrip(t *testing.T) {
	for _, m := range []Mode{None, STARTTLS, Implicit} {
		got, err := ParseMode(m.String())
		if err != nil || got != m {
			t.Errorf("ParseMode(%q) = %v, %v", m.String(), got, err)
		}
	}
	if m, err := ParseMode(""); err != nil || m != None {
		t.Errorf(`ParseMode("") = %v, %v`, m, err)
	}
	if _, err := ParseMode("tls"); err == nil || !strings.Contains(err.Error(), `"tls"`) {
		t.Errorf(`ParseMode("tls") error = %v`, err)
	}
}

func TestModeText(t *testing.T) {
	for _, m := range []Mode{None, STARTTLS, Implicit} {
		b, err := m.MarshalText()
		if err != nil {
			t.Fatal(err)
		}
		var got Mode
		if err := got.UnmarshalText(b); err != nil || got != m {
			t.Errorf("round trip of %v: %v, %v", m, got, err)
		}
	}
	if _, err := Mode(7).MarshalText(); err == nil {
		t.Error("Mode(7).MarshalText succeeded")
	}
	var m Mode
	if err := m.UnmarshalText([]byte("TLS")); err == nil {
		t.Error(`UnmarshalText("TLS") succeeded`)
	}
}
