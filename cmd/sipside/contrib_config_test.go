package main

import (
	"bytes"
	"fmt"
	"os"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/BurntSushi/toml"

	"github.com/sipside/sipside/evi"
	"github.com/sipside/sipside/internal/config"
	"github.com/sipside/sipside/kazoo"
)

// commentedTOML matches a commented-out header or key line of
// contrib/sipside.toml: "# [dmq]", "# listen = …".
var commentedTOML = regexp.MustCompile(`^# (\[\[?[a-z_.]+\]\]?\s*$|[a-z_0-9]+ = )`)

// codeKeys lists every key the config types have, as dotted paths without
// element numbers: "route.window", "amqp.consume.ack".
func codeKeys(t reflect.Type, prefix string, out map[string]bool) {
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
		if name == "" || name == "-" || !f.IsExported() {
			continue
		}
		key := name
		if prefix != "" {
			key = prefix + "." + name
		}
		ft := f.Type
		switch {
		case ft.Kind() == reflect.Struct && ft != reflect.TypeFor[config.Duration]():
			codeKeys(ft, key, out)
		case ft.Kind() == reflect.Slice && ft.Elem().Kind() == reflect.Struct:
			codeKeys(ft.Elem(), key, out)
		default:
			out[key] = true
		}
	}
}

// leaves calls fn for every leaf field of v with its key path, element
// numbers included ("route[1].window").
func leaves(v reflect.Value, prefix string, fn func(path string, v reflect.Value)) {
	t := v.Type()
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
		if name == "" || name == "-" || !f.IsExported() {
			continue
		}
		key := name
		if prefix != "" {
			key = prefix + "." + name
		}
		fv := v.Field(i)
		switch {
		case f.Type.Kind() == reflect.Struct && f.Type != reflect.TypeFor[config.Duration]():
			leaves(fv, key, fn)
		case f.Type.Kind() == reflect.Slice && f.Type.Elem().Kind() == reflect.Struct:
			for j := 0; j < fv.Len(); j++ {
				leaves(fv.Index(j), fmt.Sprintf("%s[%d]", key, j), fn)
			}
		default:
			fn(key, fv)
		}
	}
}

// tomlValue writes v as sipside.toml would.
func tomlValue(v reflect.Value) string {
	var buf bytes.Buffer
	toml.NewEncoder(&buf).Encode(map[string]any{"k": v.Interface()})
	_, val, _ := strings.Cut(strings.TrimSpace(buf.String()), " = ")
	return val
}

// contrib/sipside.toml lists every key the code has and no other, each with
// a comment, and each with its default (or a comment saying the default).
func TestContribConfigMatchesCode(t *testing.T) {
	raw, err := os.ReadFile("../../contrib/sipside.toml")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(raw), "\n")
	for i, l := range lines {
		if commentedTOML.MatchString(l) {
			lines[i] = strings.TrimPrefix(l, "# ")
		}
	}
	src := strings.Join(lines, "\n")
	var file Config
	md, err := toml.Decode(src, &file)
	if err != nil {
		t.Fatalf("contrib/sipside.toml (commented sections included): %v", err)
	}
	for _, k := range md.Undecoded() {
		t.Errorf("contrib/sipside.toml has %s, which the code does not know", k)
	}

	// Every key of the code is in the file.
	want := map[string]bool{}
	codeKeys(reflect.TypeFor[Config](), "", want)
	have := map[string]bool{}
	for _, k := range md.Keys() {
		have[k.String()] = true
	}
	var missing []string
	for k := range want {
		if !have[k] {
			missing = append(missing, k)
		}
	}
	sort.Strings(missing)
	for _, k := range missing {
		t.Errorf("contrib/sipside.toml lacks %s: add it with its default and a comment", k)
	}

	// Each value is the default, or its comment says the default.
	skel := Config{
		Input: make([]evi.InputConfig, len(file.Input)), Route: make([]evi.RouteConfig, len(file.Route)),
		Subscribe: make([]evi.SubscribeConfig, len(file.Subscribe)),
	}
	skel.AMQP.Consume = make([]kazoo.ConsumeConfig, len(file.AMQP.Consume))
	def := skel.WithDefaults()
	defaults := map[string]reflect.Value{}
	leaves(reflect.ValueOf(def), "", func(path string, v reflect.Value) { defaults[path] = v })
	pos := config.Positions(src)
	described := map[string]bool{}
	leaves(reflect.ValueOf(file), "", func(path string, v reflect.Value) {
		line := pos[path]
		if line == 0 {
			return // not written (another element of an array table)
		}
		key := regexp.MustCompile(`\[\d+\]`).ReplaceAllString(path, "")
		text := lines[line-1]
		comment := commentsAbout(lines, line)
		if comment != "" {
			described[key] = true
		}
		d, ok := defaults[path]
		if !ok || d.IsZero() || key == "amqp.node" {
			return // no default to show (amqp.node's is this host's name)
		}
		if !reflect.DeepEqual(v.Interface(), d.Interface()) && !strings.Contains(comment, "default") {
			t.Errorf("contrib/sipside.toml:%d: %s\n  is not the default %s = %s, and its comment does not say the default", line, strings.TrimSpace(text), key, tomlValue(d))
		}
	})
	for k := range want {
		if have[k] && !described[k] {
			t.Errorf("contrib/sipside.toml: %s has no comment (on its line or just above it)", k)
		}
	}
}

// commentsAbout returns the comment on line n (1-based) and the comment lines
// just above it, or above its table header when it is the first key of one.
func commentsAbout(lines []string, n int) string {
	var b strings.Builder
	if _, c, ok := strings.Cut(lines[n-1], "#"); ok {
		b.WriteString(c)
	}
	for i := n - 2; i >= 0; i-- {
		l := strings.TrimSpace(lines[i])
		switch {
		case strings.HasPrefix(l, "#"):
			b.WriteString(" " + l)
			continue
		case strings.HasPrefix(l, "[") && b.Len() == 0:
			continue // the header of this key's table: look above it
		}
		break
	}
	return strings.TrimSpace(b.String())
}
