package config

import (
	"fmt"
	"strings"
)

// Error is one problem in a configuration: where it is and what is wrong. Load, Parse,
// Validate and the builders return either an *Error or several joined with errors.Join (one
// per line); errors.As finds the first.
type Error struct {
	// File is the configuration's name as given to Load or Parse; empty for a Config built by
	// hand.
	File string
	// Line is the 1-based line of the offending value, or of the nearest enclosing one when
	// the value is missing; 0 when unknown.
	Line int
	// Field is the path of the offending field, such as "listeners[1].tls" or
	// `routing.users["alice@example.com"]`; empty for problems with the file as a whole.
	Field string
	// Err says what is wrong.
	Err error
}

// Error formats e as "file:line: field: problem", leaving out the parts that are unknown.
func (e *Error) Error() string {
	var b strings.Builder
	if e.File != "" {
		b.WriteString(e.File)
		if e.Line > 0 {
			fmt.Fprintf(&b, ":%d", e.Line)
		}
		b.WriteString(": ")
	} else if e.Line > 0 {
		fmt.Fprintf(&b, "line %d: ", e.Line)
	}
	if e.Field != "" {
		b.WriteString(e.Field)
		b.WriteString(": ")
	}
	b.WriteString(e.Err.Error())
	return b.String()
}

// Unwrap returns e.Err, so errors.Is sees through to, say, fs.ErrNotExist.
func (e *Error) Unwrap() error { return e.Err }
