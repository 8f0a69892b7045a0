package tlsconf

import "fmt"

// MarshalText implements encoding.TextMarshaler with the configuration spelling, so a Mode
// reads and writes as "none", "starttls" or "implicit" in YAML and JSON.
func (m Mode) MarshalText() ([]byte, error) {
	switch m {
	case None, STARTTLS, Implicit:
		return []byte(m.String()), nil
	}
	return nil, fmt.Errorf("invalid TLS mode %d", int(m))
}

// UnmarshalText implements encoding.TextUnmarshaler with ParseMode.
func (m *Mode) UnmarshalText(text []byte) error {
	v, err := ParseMode(string(text))
	if err != nil {
		return err
	}
	*m = v
	return nil
}
