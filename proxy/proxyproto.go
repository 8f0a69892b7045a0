package proxy

import (
	"net"
	"net/netip"

	"github.com/imapgate/imapgate/routing"
	"github.com/pires/go-proxyproto"
)

// This file is the PROXY protocol towards backends (haproxy's proxy-protocol.txt): a header
// with the client's address, written as the connection's first bytes when the backend asks
// for one (routing.Backend.ProxyProtocol), before TLS and before the greeting is read. The
// header is built by github.com/pires/go-proxyproto. Taking PROXY headers from clients
// (behind an L4 balancer) is a listener's concern and comes later (ROADMAP).

// proxyHeader returns the header of version v announcing ci's client and local addresses. An
// address the proxy does not know (not TCP) makes a LOCAL header (v2) or "PROXY UNKNOWN"
// (v1): the backend then keeps the connection's own address, as the protocol says.
func proxyHeader(v routing.ProxyProtocol, ci clientInfo) ([]byte, error) {
	var src, dst net.Addr
	if ci.client.IsValid() && ci.local.IsValid() {
		src = net.TCPAddrFromAddrPort(unmapAddrPort(ci.client))
		dst = net.TCPAddrFromAddrPort(unmapAddrPort(ci.local))
	}
	return proxyproto.HeaderProxyFromAddrs(byte(v), src, dst).Format()
}

// unmapAddrPort turns an IPv4-mapped IPv6 address (a dual-stack listener's IPv4 client) into
// the IPv4 address it stands for, so the header says TCP4.
func unmapAddrPort(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// sendProxyHeader writes the backend's PROXY header, if it wants one.
func (u *upstream) sendProxyHeader(ci clientInfo) error {
	if u.backend.ProxyProtocol == routing.ProxyProtocolOff {
		return nil
	}
	h, err := proxyHeader(u.backend.ProxyProtocol, ci)
	if err != nil {
		return u.protocolErr("PROXY header: %v", err)
	}
	if _, err := u.raw.Write(h); err != nil {
		return u.unavailable(err)
	}
	return nil
}
