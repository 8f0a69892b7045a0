package config

import (
	"bytes"
	"cmp"
	"encoding"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// Load reads and parses the configuration file at path; see Parse.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err // *fs.PathError names the file
	}
	return Parse(path, data)
}

// Parse decodes and validates a configuration. name is the file's name: it prefixes every
// error, and relative paths in the configuration are taken relative to its directory.
//
// Errors come in two rounds, each reporting all its problems, one per line with the file,
// line and field: first what stops the file from decoding (YAML syntax, unknown or duplicate
// fields, values of the wrong type, such as an unknown TLS mode or a duration without a
// unit); then, once it decodes, everything Validate checks.
func Parse(name string, data []byte) (cfg *Config, err error) {
	// yaml.v3 is not known to panic on any input since v3.0.0, but a configuration file
	// must never crash the process that checks it.
	defer func() {
		if r := recover(); r != nil {
			cfg, err = nil, &Error{File: name, Err: fmt.Errorf("cannot parse: %v", r)}
		}
	}()

	// Pass 1: the document as nodes, to know every field's line and to report unknown
	// fields and wrong types with their path.
	root, err := parseNodes(name, data)
	if err != nil {
		return nil, err
	}
	w := walker{file: name, nodes: make(map[string]position), budget: 10*len(data) + 10000}
	if root != nil {
		w.walk(nil, root, reflect.TypeFor[Config](), "")
	}
	if len(w.errs) > 0 {
		return nil, errors.Join(w.errs...)
	}

	// Pass 2: decode for real, strictly. After pass 1 this cannot fail on any input known
	// to us; if it does, its error still carries a line.
	cfg = new(Config)
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(cfg); err != nil && !errors.Is(err, io.EOF) {
		return nil, yamlError(name, err)
	}
	cfg.file, cfg.dir, cfg.nodes = name, filepath.Dir(name), w.nodes
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return cfg, nil
}

// parseNodes returns the root node of the single YAML document in data, nil when data holds
// no document.
func parseNodes(name string, data []byte) (*yaml.Node, error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, nil
		}
		return nil, yamlError(name, err)
	}
	var next yaml.Node
	if err := dec.Decode(&next); err == nil {
		return nil, &Error{File: name, Line: next.Line, Err: errors.New("more than one YAML document (remove the second ---)")}
	} else if !errors.Is(err, io.EOF) {
		return nil, yamlError(name, err)
	}
	if doc.Kind != yaml.DocumentNode || len(doc.Content) == 0 {
		return nil, nil
	}
	return doc.Content[0], nil
}

// yamlLine matches the line prefix of yaml.v3's messages: "yaml: line 3: …" for syntax
// errors, "line 3: …" inside a *yaml.TypeError.
var yamlLine = regexp.MustCompile(`^(?:yaml: )?line (\d+): (.*)$`)

// yamlError turns an error from yaml.v3 into *Error values carrying its line.
func yamlError(name string, err error) error {
	var te *yaml.TypeError
	msgs := []string{err.Error()}
	if errors.As(err, &te) {
		msgs = te.Errors
	}
	var errs []error
	for _, msg := range msgs {
		e := &Error{File: name}
		if m := yamlLine.FindStringSubmatch(msg); m != nil {
			e.Line, _ = strconv.Atoi(m[1])
			msg = m[2]
		} else {
			msg = strings.TrimPrefix(msg, "yaml: ")
		}
		e.Err = errors.New(msg)
		errs = append(errs, e)
	}
	return errors.Join(errs...)
}

var (
	unmarshalerType     = reflect.TypeFor[yaml.Unmarshaler]()
	textUnmarshalerType = reflect.TypeFor[encoding.TextUnmarshaler]()
)

// walker checks a node tree against a Go type the way yaml.v3 with KnownFields would decode
// it, but reports each problem with its field path, and records each field's node.
type walker struct {
	file  string
	nodes map[string]position
	errs  []error
	// checked holds the anchored nodes already checked against a type: an alias to one is
	// not checked again, so a problem in an anchored value is reported once, and aliases
	// cannot make checking expand ("billion laughs").
	checked map[anchored]bool
	// budget bounds the nodes visited, as a second line of defence.
	budget int
}

type anchored struct {
	n *yaml.Node
	t reflect.Type
}

func (w *walker) errorf(n *yaml.Node, path, format string, args ...any) {
	w.errs = append(w.errs, &Error{File: w.file, Line: n.Line, Field: path, Err: fmt.Errorf(format, args...)})
}

// position is where a field is in the file: its key (nil for list elements and the root)
// and its value.
type position struct{ key, value *yaml.Node }

// walk checks the value n, written under key k (nil if none), against t.
func (w *walker) walk(k, n *yaml.Node, t reflect.Type, path string) {
	if w.budget--; w.budget < 0 {
		if w.budget == -1 {
			w.errorf(n, path, "document too large once aliases are expanded")
		}
		return
	}
	if _, ok := w.nodes[path]; !ok {
		w.nodes[path] = position{k, n}
	}
	if n.Kind == yaml.AliasNode {
		if n.Alias != nil {
			w.walk(k, n.Alias, t, path)
		}
		return
	}
	if n.Anchor != "" {
		if w.checked[anchored{n, t}] {
			return
		}
		if w.checked == nil {
			w.checked = make(map[anchored]bool)
		}
		w.checked[anchored{n, t}] = true
	}
	if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null" {
		return // the zero value
	}
	switch {
	case isLeaf(t):
		if n.Kind != yaml.ScalarNode {
			w.errorf(n, path, "want %s, got %s", describeType(t), describeNode(n))
			return
		}
		if err := n.Decode(reflect.New(t).Interface()); err != nil {
			var te *yaml.TypeError
			if errors.As(err, &te) {
				w.errorf(n, path, "want %s, got %q", describeType(t), n.Value)
			} else {
				w.errorf(n, path, "%v", err)
			}
		}
	case t.Kind() == reflect.Struct:
		if n.Kind != yaml.MappingNode {
			w.errorf(n, path, "want a mapping (field: value), got %s", describeNode(n))
			return
		}
		fields, names := structFields(t)
		seen := make(map[string]int)
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			if k.Kind != yaml.ScalarNode {
				w.errorf(k, path, "want a field name, got %s", describeNode(k))
				continue
			}
			if k.ShortTag() == "!!merge" {
				w.errorf(k, path, "merge keys (<<) are not supported")
				continue
			}
			fpath := joinPath(path, k.Value)
			if line, dup := seen[k.Value]; dup {
				w.errorf(k, fpath, "field given twice (first on line %d)", line)
				continue
			}
			seen[k.Value] = k.Line
			f, ok := fields[k.Value]
			if !ok {
				w.errorf(k, fpath, "unknown field%s (want %s)", suggest(k.Value, names), strings.Join(names, ", "))
				continue
			}
			w.walk(k, v, f.Type, fpath)
		}
	case t.Kind() == reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			w.errorf(n, path, "want a list, got %s", describeNode(n))
			return
		}
		for i, c := range n.Content {
			w.walk(nil, c, t.Elem(), fmt.Sprintf("%s[%d]", path, i))
		}
	case t.Kind() == reflect.Map && t.Key().Kind() == reflect.String:
		if n.Kind != yaml.MappingNode {
			w.errorf(n, path, "want a mapping (key: value), got %s", describeNode(n))
			return
		}
		seen := make(map[string]int)
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			if k.Kind != yaml.ScalarNode || k.ShortTag() == "!!null" || k.ShortTag() == "!!merge" {
				w.errorf(k, path, "want a plain key, got %s", describeNode(k))
				continue
			}
			kpath := path + "[" + strconv.Quote(k.Value) + "]"
			if line, dup := seen[k.Value]; dup {
				w.errorf(k, kpath, "key given twice (first on line %d)", line)
				continue
			}
			seen[k.Value] = k.Line
			w.walk(k, v, t.Elem(), kpath)
		}
	default:
		// Not reachable with Config's types; kept so that a new field type fails loudly.
		w.errorf(n, path, "internal error: cannot check values of type %v", t)
	}
}

func isLeaf(t reflect.Type) bool {
	p := reflect.PointerTo(t)
	if p.Implements(unmarshalerType) || p.Implements(textUnmarshalerType) {
		return true
	}
	switch t.Kind() {
	case reflect.String, reflect.Bool, reflect.Float32, reflect.Float64,
		reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return true
	}
	return false
}

func describeType(t reflect.Type) string {
	switch t {
	case reflect.TypeFor[Duration]():
		return `a duration such as "5s"`
	}
	switch t.Kind() {
	case reflect.Bool:
		return "true or false"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		if t.Implements(reflect.TypeFor[fmt.Stringer]()) {
			return "a word" // an enum such as tlsconf.Mode
		}
		return "a whole number"
	}
	return "a single value"
}

func describeNode(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		return strconv.Quote(n.Value)
	case yaml.AliasNode:
		return "an alias"
	}
	return "a document"
}

// structFields returns t's fields by YAML name, and the names in declaration order.
func structFields(t reflect.Type) (map[string]reflect.StructField, []string) {
	fields := make(map[string]reflect.StructField)
	var names []string
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if name == "-" {
			continue
		}
		if name == "" {
			name = strings.ToLower(f.Name)
		}
		fields[name] = f
		names = append(names, name)
	}
	return fields, names
}

// joinPath appends a field name to a path. A name that is not a plain word (only an
// unknown field can be one) is quoted, so that a path stays on one line and unambiguous.
func joinPath(path, field string) string {
	if !plainName.MatchString(field) {
		field = strconv.Quote(field)
	}
	if path == "" {
		return field
	}
	return path + "." + field
}

var plainName = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)

// parentPath strips the last element of a field path: "a.b[2]" → "a.b",
// `a["x.y"]` → "a", "a.b" → "a", "a" → "".
func parentPath(path string) string {
	switch {
	case strings.HasSuffix(path, `"]`):
		if i := strings.LastIndex(path, `["`); i >= 0 {
			return path[:i]
		}
	case strings.HasSuffix(path, "]"):
		if i := strings.LastIndexByte(path, '['); i >= 0 {
			return path[:i]
		}
	}
	if i := strings.LastIndexByte(path, '.'); i >= 0 {
		return path[:i]
	}
	return ""
}

// suggest returns ` (did you mean "x"?)` for the name closest to s, if it is close.
func suggest(s string, names []string) string {
	best, bestDist := "", 3
	for _, n := range names {
		if d := editDistance(strings.ToLower(s), n); d < bestDist {
			best, bestDist = n, d
		}
	}
	if best == "" {
		return ""
	}
	return fmt.Sprintf(" (did you mean %q?)", best)
}

// editDistance is the Levenshtein distance between a and b, in bytes.
func editDistance(a, b string) int {
	if len(a) > 64 || len(b) > 64 {
		return max(len(a), len(b))
	}
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// keysInOrder returns the keys of the map at path in the order they are written in the file,
// or sorted when the Config was built by hand: errors come in a stable order, and a key that
// clashes with an earlier one is reported where the later one is.
func (c *Config) keysInOrder(path string, m map[string]string) []string {
	keys := slices.Sorted(maps.Keys(m))
	line := func(k string) int {
		if p, ok := c.nodes[path+"["+strconv.Quote(k)+"]"]; ok && p.key != nil {
			return p.key.Line*1_000_000 + p.key.Column
		}
		return 0
	}
	slices.SortStableFunc(keys, func(a, b string) int { return cmp.Compare(line(a), line(b)) })
	return keys
}
