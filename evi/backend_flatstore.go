package evi

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"github.com/valyala/fastjson"
)

func init() { backendSchemes["flatstore"] = newFlatstoreBackend }

// Reopener is a backend that keeps files open and can reopen them, so that
// logrotate can move a file away and sipside starts a new one (SIGHUP).
type Reopener interface{ Reopen() error }

// ReopenBackend reopens b's files: b itself when it is a Reopener, else the
// members of a virtual subscriber that are. Other backends are left alone.
func ReopenBackend(b Backend) error {
	if r, ok := b.(Reopener); ok {
		return r.Reopen()
	}
	v, ok := b.(*Virtual)
	if !ok {
		return nil
	}
	var errs []error
	for _, m := range v.members {
		if r, ok := m.b.(Reopener); ok {
			if err := r.Reopen(); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", m.name, err))
			}
		}
	}
	return errors.Join(errs...)
}

// flatstoreBackend appends one line per event to a file, byte for byte what
// OpenSIPS's event_flatstore writes with its default modparams:
//
//	NAME,value,value…\n
//
// values only, no names, no quoting; a ',' inside a string becomes ' ', a
// null string is an empty field, nested JSON is written as its compact text.
// Like the module, a newline inside a value is written as is.
//
// Each event is one write(2) on an O_APPEND descriptor: a successful Deliver
// means the line is in the kernel, whole, even when other processes append
// to the same file.
type flatstoreBackend struct {
	path string

	mu  sync.Mutex
	f   *os.File
	buf []byte
	p   fastjson.Parser
}

// flatstoreMode is event_flatstore's default file_permissions.
const flatstoreMode = 0o644

func newFlatstoreBackend(rest string, _ Deps) (Backend, error) {
	if rest == "" {
		return nil, errors.New("flatstore: no file: write flatstore:/var/log/sipside/events.log")
	}
	// The module refuses a path whose directory is missing or that names a
	// directory at subscribe time; say so at config time too (stat, no open).
	dir := filepath.Dir(rest)
	if st, err := os.Stat(dir); err != nil {
		return nil, fmt.Errorf("flatstore: directory of %q: %w (create it first)", rest, err)
	} else if !st.IsDir() {
		return nil, fmt.Errorf("flatstore: %q is not a directory", dir)
	}
	if st, err := os.Stat(rest); err == nil && st.IsDir() {
		return nil, fmt.Errorf("flatstore: %q is a directory, want a file", rest)
	}
	return &flatstoreBackend{path: rest}, nil
}

func (b *flatstoreBackend) String() string { return "flatstore:" + b.path }

func (b *flatstoreBackend) open() (*os.File, error) {
	f, err := os.OpenFile(b.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, flatstoreMode)
	if err != nil {
		return nil, fmt.Errorf("flatstore: %w (check the directory exists and is writable)", err)
	}
	return f, nil
}

func (b *flatstoreBackend) Deliver(_ context.Context, ev *Event) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	line, err := appendFlatstoreLine(b.buf[:0], ev, &b.p)
	if err != nil {
		return fmt.Errorf("flatstore: event %s: %w", ev.Name, err)
	}
	b.buf = line
	if b.f == nil {
		if b.f, err = b.open(); err != nil {
			return err
		}
	}
	if _, err := b.f.Write(line); err != nil {
		// Reopen on the next event: the file system may have come back.
		b.f.Close()
		b.f = nil
		return fmt.Errorf("flatstore: %w", err)
	}
	return nil
}

// Reopen closes the file and opens the path again, so that after logrotate
// moved the file the next lines go to a new one. The new file is opened
// before the old one is closed: a failure keeps writing to the old file.
func (b *flatstoreBackend) Reopen() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	f, err := b.open()
	if err != nil {
		return err
	}
	if b.f != nil {
		b.f.Close()
	}
	b.f = f
	return nil
}

func (b *flatstoreBackend) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.f == nil {
		return nil
	}
	err := b.f.Close()
	b.f = nil
	return err
}

// appendFlatstoreLine appends ev in event_flatstore's line format.
func appendFlatstoreLine(dst []byte, ev *Event, p *fastjson.Parser) ([]byte, error) {
	dst = append(dst, ev.Name...)
	err := eachEVIParam(ev, p, func(ep eviParam) {
		dst = append(dst, ',')
		if ep.kind == eviInt {
			dst = append(dst, ep.val...)
			return
		}
		for _, c := range ep.val {
			if c == ',' {
				c = ' '
			}
			dst = append(dst, c)
		}
	})
	if err != nil {
		return nil, err
	}
	return append(dst, '\n'), nil
}

// eviParamKind is the type of an OpenSIPS EVI parameter.
type eviParamKind int

const (
	eviString eviParamKind = iota
	eviInt
	eviNull // a string parameter with no buffer; OpenSIPS prints it as JSON null
)

// eviParam is one event parameter as OpenSIPS holds it before a transport
// formats it: an optional name and a string or int value.
type eviParam struct {
	name []byte // nil or empty: unnamed (an array element, or the "" key)
	kind eviParamKind
	val  []byte // the decoded string, or the number's text
}

// eachEVIParam turns the JSON params of ev back into OpenSIPS's parameter
// list, in order and with duplicate keys kept, for the transports that do
// not send JSON (flatstore, xmlrpc). Strings are unescaped; numbers keep
// their text; true, false, objects and arrays become their compact JSON text
// as strings, as MI raise_event makes them.
func eachEVIParam(ev *Event, p *fastjson.Parser, fn func(eviParam)) error {
	if len(ev.Params) == 0 {
		return nil
	}
	v, err := p.ParseBytes(ev.Params)
	if err != nil {
		return fmt.Errorf("params are not valid JSON: %w", err)
	}
	conv := func(name []byte, v *fastjson.Value) eviParam {
		ep := eviParam{name: name}
		switch v.Type() {
		case fastjson.TypeString:
			ep.val = v.GetStringBytes()
		case fastjson.TypeNull:
			ep.kind = eviNull
		case fastjson.TypeNumber:
			ep.val = v.MarshalTo(nil)
			ep.kind = eviInt
			for _, c := range ep.val {
				if c == '.' || c == 'e' || c == 'E' {
					ep.kind = eviString // not an EVI int: keep the text
					break
				}
			}
		default:
			ep.val = v.MarshalTo(nil)
		}
		return ep
	}
	switch v.Type() {
	case fastjson.TypeObject:
		o, _ := v.Object()
		o.Visit(func(k []byte, v *fastjson.Value) { fn(conv(k, v)) })
	case fastjson.TypeArray:
		a, _ := v.Array()
		for _, e := range a {
			fn(conv(nil, e))
		}
	default:
		return fmt.Errorf("params is a JSON %s, want an object or an array", v.Type())
	}
	return nil
}
