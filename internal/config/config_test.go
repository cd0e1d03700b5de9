package config

import (
	"reflect"
	"strings"
	"testing"
)

func TestPositions(t *testing.T) {
	src := `# top
shutdown_timeout = "4s"
[log]
level = "info"   # [not a header]
[[route]]
to = "stdout:"
events = [
  "E_A",   # a = 1
  "E_B",
]
[[route]]
name = "x"
"window" = 5
[spool]
dir = """
not = a key
"""
max_bytes = 10
[[amqp.consume]]
ack = "script"
[[amqp.consume]]
ack = "later"
a.b = 1
`
	pos := Positions(src)
	for key, want := range map[string]int{
		"shutdown_timeout": 2, "log": 3, "log.level": 4, "route[0]": 5, "route[0].to": 6, "route[0].events": 7,
		"route[1]": 11, "route[1].name": 12, "route[1].window": 13, "spool.dir": 15, "spool.max_bytes": 18,
		"amqp.consume[0].ack": 20, "amqp.consume[1].ack": 22, "amqp.consume[1].a.b": 23,
	} {
		if got := pos[key]; got != want {
			t.Errorf("%s: line %d, want %d", key, got, want)
		}
	}
	for _, key := range []string{"spool.not", "route[0].a", "log.not"} {
		if _, ok := pos[key]; ok {
			t.Errorf("%s found: %v", key, pos)
		}
	}
	if got := Line(pos, "route[1].queue"); got != 11 {
		t.Errorf("Line of an unwritten key: %d, want its table's header 11", got)
	}
}

func TestProblemsSortedByLine(t *testing.T) {
	var p Problems
	r := p.Index("route", 0)
	r.Add("window", "-5: want 1 or more")
	p.At("log").Add("level", "%q: want debug, info, warn or error", "loud")
	p.Add("", "no inputs")
	e := p.Err().(*Error)
	e.File = "sipside.toml"
	e.Problems[0].Line, e.Problems[1].Line = 7, 3
	want := strings.Join([]string{
		`sipside.toml:3: log.level: "loud": want debug, info, warn or error`,
		`sipside.toml:7: route[0].window: -5: want 1 or more`,
		`sipside.toml: no inputs`,
	}, "\n")
	if got := e.Error(); got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
}

func FuzzPositions(f *testing.F) {
	f.Add("[a]\nb = 1\n[[c]]\nd = [\n1,\n]\ne = \"\"\"\nx\n\"\"\"\n")
	f.Fuzz(func(t *testing.T, src string) {
		for k, l := range Positions(src) {
			if l < 1 || k == "" {
				t.Fatalf("%q at %d", k, l)
			}
		}
	})
}

func TestCheckTypes(t *testing.T) {
	type route struct {
		To      string   `toml:"to"`
		Queue   int      `toml:"queue"`
		Timeout Duration `toml:"timeout"`
		Events  []string `toml:"events"`
	}
	type cfg struct {
		Shutdown Duration `toml:"shutdown_timeout"`
		Log      struct {
			Level string `toml:"level"`
		} `toml:"log"`
		Route []route `toml:"route"`
		On    bool    `toml:"on"`
	}
	data := map[string]any{
		"shutdown_timeout": "4 seconds",
		"log":              map[string]any{"level": int64(3)},
		"on":               "yes",
		"route": []map[string]any{
			{"to": "stdout:", "queue": "10", "timeout": int64(5), "events": []any{"E_A", int64(7)}},
			{"to": "stdout:", "queue": int64(10)},
		},
	}
	var p Problems
	CheckTypes(data, reflect.TypeFor[cfg](), &p)
	var got []string
	for _, pr := range p.List() {
		got = append(got, pr.Key)
	}
	want := []string{"shutdown_timeout", "log.level", "route[0].queue", "route[0].timeout", "route[0].events[1]", "on"}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("problems at %v, want %v\n%v", got, want, p.List())
	}
}
