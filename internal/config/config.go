// Package config holds what every section of sipside.toml shares: the one
// duration type, problems reported as data (key path and message, never
// parsed back out of strings), and the positions of keys in a TOML file, so
// that sipside check can report every problem at once, each at its line.
package config

import (
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Duration is a time.Duration written in TOML as a string: "500ms", "30s", "5m".
type Duration time.Duration

// UnmarshalText parses "500ms", "10s", "2m".
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("%q is not a duration: write e.g. \"500ms\", \"30s\" or \"5m\"", b)
	}
	*d = Duration(v)
	return nil
}

// MarshalText writes the duration as Go prints it.
func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

func (d Duration) String() string { return time.Duration(d).String() }

// Std is the duration as a time.Duration.
func (d Duration) Std() time.Duration { return time.Duration(d) }

// Problem is one bad setting: where it is (a key path as sipside.toml writes
// it: "route[0].window", "amqp.consume[1].ack", "log.level") and what is wrong.
type Problem struct {
	Key string
	Msg string
	// Line is filled in by whoever knows the file (0: the key is not written
	// in it, a default is at fault, or the problem is the file's as a whole).
	Line int
}

// Problems collects every bad setting of a configuration. The zero value is
// ready; At returns a view that prefixes keys, for a section or an element.
type Problems struct {
	list   *[]Problem
	prefix string
}

// At returns a view of p whose keys are under prefix ("route[2]", "dmq").
func (p *Problems) At(prefix string) *Problems {
	p.init()
	return &Problems{list: p.list, prefix: join(p.prefix, prefix)}
}

// Index returns a view under prefix[i], for one element of an array table.
func (p *Problems) Index(prefix string, i int) *Problems {
	return p.At(prefix + "[" + strconv.Itoa(i) + "]")
}

func (p *Problems) init() {
	if p.list == nil {
		p.list = new([]Problem)
	}
}

func join(a, b string) string {
	switch {
	case a == "":
		return b
	case b == "":
		return a
	}
	return a + "." + b
}

// Add records that key (relative to the view) is bad.
func (p *Problems) Add(key, format string, args ...any) {
	p.init()
	*p.list = append(*p.list, Problem{Key: join(p.prefix, key), Msg: fmt.Sprintf(format, args...)})
}

// AddErr records err against key; nil is ignored.
func (p *Problems) AddErr(key string, err error) {
	if err != nil {
		p.Add(key, "%s", err.Error())
	}
}

// Len is the number of problems recorded.
func (p *Problems) Len() int {
	if p.list == nil {
		return 0
	}
	return len(*p.list)
}

// List returns the problems recorded, in the order they were found.
func (p *Problems) List() []Problem {
	if p.list == nil {
		return nil
	}
	return append([]Problem(nil), *p.list...)
}

// Err returns nil when nothing is wrong, else an *Error with every problem.
func (p *Problems) Err() error {
	if p.Len() == 0 {
		return nil
	}
	return &Error{Problems: p.List()}
}

// Error is every problem of one configuration; File, when set, prefixes each
// line as sipside.toml:7:.
type Error struct {
	File     string
	Problems []Problem
}

// Error prints one problem per line, sorted by line (those without a line
// last, in the order found): "sipside.toml:7: route[0].window: -5: want 1 or more".
func (e *Error) Error() string {
	ps := append([]Problem(nil), e.Problems...)
	sort.SliceStable(ps, func(i, j int) bool {
		a, b := ps[i].Line, ps[j].Line
		if a == 0 || b == 0 {
			return a != 0 && b == 0
		}
		return a < b
	})
	var b strings.Builder
	for i, p := range ps {
		if i > 0 {
			b.WriteByte('\n')
		}
		if e.File != "" {
			b.WriteString(e.File)
			if p.Line > 0 {
				b.WriteString(":" + strconv.Itoa(p.Line))
			}
			b.WriteString(": ")
		}
		if p.Key != "" {
			b.WriteString(p.Key + ": ")
		}
		b.WriteString(p.Msg)
	}
	return b.String()
}

// AsError returns the problems of err when it is an *Error, else one problem
// with err's text and no key.
func AsError(err error) []Problem {
	var ce *Error
	if errors.As(err, &ce) {
		return ce.Problems
	}
	return []Problem{{Msg: err.Error()}}
}
