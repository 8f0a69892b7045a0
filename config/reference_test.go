package config

import (
	"os"
	"reflect"
	"regexp"
	"strings"
	"testing"
)

// TestReference keeps README.md honest: every field of the configuration is documented
// there, and every YAML example in it parses.
func TestReference(t *testing.T) {
	data, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	ref := string(data)

	var check func(typ reflect.Type, path string)
	check = func(typ reflect.Type, path string) {
		fields, names := structFields(typ)
		for _, name := range names {
			p := joinPath(path, name)
			if !strings.Contains(ref, "`"+name+"`") {
				t.Errorf("README.md does not document %s", p)
			}
			ft := fields[name].Type
			if ft.Kind() == reflect.Slice {
				ft = ft.Elem()
			}
			if ft.Kind() == reflect.Struct && !isLeaf(ft) {
				check(ft, p)
			}
		}
	}
	check(reflect.TypeFor[Config](), "")

	blocks := regexp.MustCompile("(?s)```yaml\n(.*?)```").FindAllStringSubmatch(ref, -1)
	if len(blocks) == 0 {
		t.Fatal("no yaml example in README.md")
	}
	for _, b := range blocks {
		if _, err := Parse("README.md", []byte(b[1])); err != nil {
			t.Errorf("example does not parse: %v\n%s", err, b[1])
		}
	}
}
