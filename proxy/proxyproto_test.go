package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/imapgate/imapgate/routing"
	"github.com/imapgate/imapgate/tlsconf"
	"github.com/pires/go-proxyproto"
	"github.com/pires/go-proxyproto/tlvparse"
)

// The header the proxy sends a backend, read back as a backend reads it.
func TestProxyHeader(t *testing.T) {
	tls13 := &clientTLSInfo{version: "TLSv1.3", cipher: "TLS_AES_128_GCM_SHA256", serverName: "imap.example.org"}
	for _, tc := range []struct {
		name          string
		v             routing.ProxyProtocol
		client, local string
		tls           *clientTLSInfo
		wantText      string // v1's header, "" for v2
		wantSrc       string // "" for a LOCAL header
		wantDst       string
	}{
		{name: "v1 IPv4", v: routing.ProxyProtocolV1, client: "192.0.2.7:51000", local: "198.51.100.1:143",
			wantText: "PROXY TCP4 192.0.2.7 198.51.100.1 51000 143\r\n", wantSrc: "192.0.2.7:51000", wantDst: "198.51.100.1:143"},
		{name: "v1 IPv6", v: routing.ProxyProtocolV1, client: "[2001:db8::7]:51000", local: "[2001:db8::1]:993",
			wantText: "PROXY TCP6 2001:db8::7 2001:db8::1 51000 993\r\n", wantSrc: "[2001:db8::7]:51000", wantDst: "[2001:db8::1]:993"},
		// A dual-stack listener's IPv4 client is announced as IPv4.
		{name: "v1 mapped", v: routing.ProxyProtocolV1, client: "[::ffff:192.0.2.7]:51000", local: "[::ffff:198.51.100.1]:143",
			wantText: "PROXY TCP4 192.0.2.7 198.51.100.1 51000 143\r\n", wantSrc: "192.0.2.7:51000", wantDst: "198.51.100.1:143"},
		{name: "v1 unknown", v: routing.ProxyProtocolV1, wantText: "PROXY UNKNOWN\r\n"},
		// Version 1 has no room for the client's TLS: the same line as without.
		{name: "v1 TLS client", v: routing.ProxyProtocolV1, client: "192.0.2.7:51000", local: "198.51.100.1:993", tls: tls13,
			wantText: "PROXY TCP4 192.0.2.7 198.51.100.1 51000 993\r\n", wantSrc: "192.0.2.7:51000", wantDst: "198.51.100.1:993"},
		{name: "v2 IPv4", v: routing.ProxyProtocolV2, client: "192.0.2.7:51000", local: "198.51.100.1:143",
			wantSrc: "192.0.2.7:51000", wantDst: "198.51.100.1:143"},
		{name: "v2 IPv6", v: routing.ProxyProtocolV2, client: "[2001:db8::7]:51000", local: "[2001:db8::1]:993",
			wantSrc: "[2001:db8::7]:51000", wantDst: "[2001:db8::1]:993"},
		{name: "v2 unknown", v: routing.ProxyProtocolV2},
		{name: "v2 TLS client", v: routing.ProxyProtocolV2, client: "192.0.2.7:51000", local: "198.51.100.1:993", tls: tls13,
			wantSrc: "192.0.2.7:51000", wantDst: "198.51.100.1:993"},
		{name: "v2 TLS client without SNI", v: routing.ProxyProtocolV2, client: "192.0.2.7:51000", local: "198.51.100.1:993",
			tls:     &clientTLSInfo{version: "TLSv1.2", cipher: "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"},
			wantSrc: "192.0.2.7:51000", wantDst: "198.51.100.1:993"},
		// A client's 60 000-byte server name is no DNS name: left out, the header stays small.
		{name: "v2 TLS client with an overlong SNI", v: routing.ProxyProtocolV2, client: "192.0.2.7:51000", local: "198.51.100.1:993",
			tls:     &clientTLSInfo{version: "TLSv1.3", cipher: "TLS_AES_128_GCM_SHA256", serverName: strings.Repeat("a", 60000)},
			wantSrc: "192.0.2.7:51000", wantDst: "198.51.100.1:993"},
		// Nor does a name with bytes no DNS name has, which would reach the backend's log.
		{name: "v2 TLS client with a line break in its SNI", v: routing.ProxyProtocolV2, client: "192.0.2.7:51000", local: "198.51.100.1:993",
			tls:     &clientTLSInfo{version: "TLSv1.3", cipher: "TLS_AES_128_GCM_SHA256", serverName: "evil\nFAKE-LINE: injected"},
			wantSrc: "192.0.2.7:51000", wantDst: "198.51.100.1:993"},
		// Addresses unknown, TLS known: a LOCAL header still says the client used TLS.
		{name: "v2 unknown, TLS client", v: routing.ProxyProtocolV2, tls: tls13},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ci := clientInfo{tls: tc.tls}
			if tc.client != "" {
				ci.client, ci.local = netip.MustParseAddrPort(tc.client), netip.MustParseAddrPort(tc.local)
			}
			h, err := proxyHeader(tc.v, ci)
			if err != nil {
				t.Fatal(err)
			}
			if tc.wantText != "" && string(h) != tc.wantText {
				t.Errorf("header %q, want %q", h, tc.wantText)
			}
			// The greeting a backend would send next must stay in the reader, unread.
			br := bufio.NewReader(bytes.NewReader(append(h, "a1 CAPABILITY\r\n"...)))
			got, err := proxyproto.Read(br)
			if err != nil {
				t.Fatalf("reading %q back: %v", h, err)
			}
			if got.Version != byte(tc.v) {
				t.Errorf("version %d, want %d", got.Version, tc.v)
			}
			switch {
			case tc.wantSrc == "" && got.Command != proxyproto.LOCAL && got.TransportProtocol != proxyproto.UNSPEC:
				t.Errorf("header for an unknown client says %v %v, want LOCAL or UNKNOWN", got.Command, got.TransportProtocol)
			case tc.wantSrc != "" && (got.SourceAddr == nil || got.SourceAddr.String() != tc.wantSrc):
				t.Errorf("source %v, want %s", got.SourceAddr, tc.wantSrc)
			case tc.wantDst != "" && (got.DestinationAddr == nil || got.DestinationAddr.String() != tc.wantDst):
				t.Errorf("destination %v, want %s", got.DestinationAddr, tc.wantDst)
			}
			if rest, _ := br.ReadString('\n'); rest != "a1 CAPABILITY\r\n" {
				t.Errorf("after the header the reader has %q", rest)
			}
			if len(h) > 300 {
				t.Errorf("header of %d bytes", len(h))
			}
			checkTLSTLVs(t, got, tc.v == routing.ProxyProtocolV2, tc.tls)
		})
	}
}

// checkTLSTLVs checks what a version 2 header says of the client's TLS: PP2_TYPE_SSL with
// the client bit, version and cipher, and PP2_TYPE_AUTHORITY with the SNI; nothing for a
// cleartext client.
func checkTLSTLVs(t *testing.T, h *proxyproto.Header, v2 bool, want *clientTLSInfo) {
	t.Helper()
	tlvs, err := h.TLVs()
	if err != nil {
		t.Fatalf("TLVs: %v", err)
	}
	ssl, hasSSL := tlvparse.FindSSL(tlvs)
	var authority string
	for _, tlv := range tlvs {
		if tlv.Type == proxyproto.PP2_TYPE_AUTHORITY {
			authority = string(tlv.Value)
		}
	}
	if !v2 || want == nil {
		if len(tlvs) != 0 {
			t.Errorf("TLVs %v for a cleartext client or a v1 header, want none", tlvs)
		}
		return
	}
	if !hasSSL || !ssl.ClientSSL() || ssl.Verified() || ssl.ClientCertConn() {
		t.Errorf("PP2_TYPE_SSL %+v (found %v), want the client bit only and no verified certificate", ssl, hasSSL)
	}
	if v, _ := ssl.SSLVersion(); v != want.version {
		t.Errorf("SSL version %q, want %q", v, want.version)
	}
	if c, _ := ssl.SSLCipher(); c != want.cipher {
		t.Errorf("SSL cipher %q, want %q", c, want.cipher)
	}
	wantName := want.serverName
	if !hostnameLike(wantName) {
		wantName = "" // no DNS name: left out
	}
	if authority != wantName {
		t.Errorf("authority %q, want %q", authority, wantName)
	}
}

// The bytes of a version 2 header for a TLS client, written out by hand from haproxy's
// proxy-protocol.txt (section 2.2), not read back by the library that wrote them.
func TestProxyHeaderV2Bytes(t *testing.T) {
	ci := clientInfo{client: netip.MustParseAddrPort("192.0.2.7:51000"), local: netip.MustParseAddrPort("198.51.100.1:993"),
		tls: &clientTLSInfo{version: "TLSv1.3", cipher: "TLS_AES_128_GCM_SHA256", serverName: "imap.example.org"}}
	h, err := proxyHeader(routing.ProxyProtocolV2, ci)
	if err != nil {
		t.Fatal(err)
	}
	want := "\r\n\r\n\x00\r\nQUIT\n" + // signature
		"\x21" + // version 2, PROXY
		"\x11" + // TCP over IPv4
		"\x00\x4a" + // 74 bytes follow: 12 of addresses, 62 of TLVs
		"\xc0\x00\x02\x07" + "\xc6\x33\x64\x01" + // 192.0.2.7, 198.51.100.1
		"\xc7\x38" + "\x03\xe1" + // 51000, 993
		"\x20\x00\x28" + // PP2_TYPE_SSL, 40 bytes
		"\x01" + "\x00\x00\x00\x01" + // client: SSL; verify: no verified certificate
		"\x21\x00\x07TLSv1.3" + // PP2_SUBTYPE_SSL_VERSION
		"\x23\x00\x16TLS_AES_128_GCM_SHA256" + // PP2_SUBTYPE_SSL_CIPHER
		"\x02\x00\x10imap.example.org" // PP2_TYPE_AUTHORITY
	if string(h) != want {
		t.Errorf("header\n%q\nwant\n%q", h, want)
	}
}

// What the header says of a TLS client comes from the handshake: OpenSSL's spelling of the
// version, crypto/tls's name of the suite, the SNI.
func TestTLSInfoOf(t *testing.T) {
	cfg, pem, err := tlsconf.SelfSigned("127.0.0.1", "localhost")
	if err != nil {
		t.Fatal(err)
	}
	pool, err := tlsconf.CertPool(pem)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		max         uint16
		serverName  string
		wantVersion string
	}{
		{tls.VersionTLS13, "localhost", "TLSv1.3"},
		{tls.VersionTLS12, "localhost", "TLSv1.2"},
		{tls.VersionTLS13, "127.0.0.1", "TLSv1.3"}, // an IP address goes as no SNI
	} {
		t.Run(tc.wantVersion+" "+tc.serverName, func(t *testing.T) {
			cc, sc := net.Pipe()
			defer cc.Close()
			defer sc.Close()
			client := tls.Client(cc, &tls.Config{RootCAs: pool, ServerName: tc.serverName, MaxVersion: tc.max})
			errc := make(chan error, 1)
			go func() { errc <- client.Handshake() }()
			server := tls.Server(sc, cfg)
			if err := server.Handshake(); err != nil {
				t.Fatal(err)
			}
			if err := <-errc; err != nil {
				t.Fatal(err)
			}
			got := tlsInfoOf(server)
			wantName := tc.serverName
			if net.ParseIP(wantName) != nil {
				wantName = ""
			}
			cs := server.ConnectionState()
			if got == nil || got.version != tc.wantVersion || got.serverName != wantName ||
				got.cipher != tls.CipherSuiteName(cs.CipherSuite) || !strings.HasPrefix(got.cipher, "TLS_") {
				t.Errorf("tlsInfoOf: %+v, want version %q, server name %q, cipher %q", got, tc.wantVersion, wantName,
					tls.CipherSuiteName(cs.CipherSuite))
			}
		})
	}
	if got := tlsInfoOf(&net.TCPConn{}); got != nil {
		t.Errorf("tlsInfoOf of a cleartext connection: %+v, want nil", got)
	}
}

// A version the protocol does not have is the proxy's own fault, never sent as another one,
// and found before any connection to the backend.
func TestProxyHeaderUnknownVersion(t *testing.T) {
	for _, v := range []routing.ProxyProtocol{routing.ProxyProtocolOff, 3, -1} {
		if h, err := proxyHeader(v, clientInfo{}); err == nil {
			t.Errorf("version %d: header %q, want an error", v, h)
		}
	}
	ln, err := netListen()
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	be := &routing.Backend{Address: ln.Addr().String(), ProxyProtocol: 3}
	var fe *proxyFaultError
	if _, err := dialUpstream(context.Background(), be, 5*time.Second, clientInfo{}); !errors.As(err, &fe) {
		t.Errorf("dialUpstream with version 3: %v, want a *proxyFaultError", err)
	}
	// The listener's first connection must be this marker's: connections queue in order.
	marker, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer marker.Close()
	first, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	if first.RemoteAddr().String() != marker.LocalAddr().String() {
		t.Errorf("the backend got a connection from %v before the marker's: dialUpstream connected before finding it could not make the header", first.RemoteAddr())
	}
}
