package evi

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The lines OpenSIPS 3.6.8's event_flatstore wrote for the lab's events
// (captures/event-03-unix-and-flatstore.txt), and how the rest of what a
// proxy can send comes out.
func TestFlatstoreLineFormat(t *testing.T) {
	for _, tc := range []struct {
		name, params, want string
	}{
		{"named as captured", `{"k":"v w","n":1}`, "E_MY_EVENT,v w,1\n"},
		{"duplicate empty keys as captured", `{"":"a","":"b"}`, "E_MY_EVENT,a,b\n"},
		{"array as captured", `[2,"first"]`, "E_MY_EVENT,2,first\n"},
		{"no params as captured", ``, "E_MY_EVENT\n"},
		{"null is an empty field", `{"received":null,"path":null,"q":-1}`, "E_MY_EVENT,,,-1\n"},
		{"empty string is an empty field", `["",""]`, "E_MY_EVENT,,\n"},
		{"comma in a value becomes a space", `["a,b"]`, "E_MY_EVENT,a b\n"},
		{"escapes are decoded, newlines kept", `["x\"y\r\nz\u00e9"]`, "E_MY_EVENT,x\"y\r\nzé\n"},
		{"nested JSON as compact text", `{"o":{"x":true,"y":[1,2]}}`, "E_MY_EVENT,{\"x\":true \"y\":[1 2]}\n"},
		{"non-integer number keeps its text", `[1.5,true]`, "E_MY_EVENT,1.5,true\n"},
		{"invalid UTF-8 goes through", "[\"a\xffb\"]", "E_MY_EVENT,a\xffb\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ev := &Event{Name: "E_MY_EVENT"}
			if tc.params != "" {
				ev.Params = []byte(tc.params)
			}
			dir := t.TempDir()
			path := filepath.Join(dir, "events.log")
			b, err := NewBackend("flatstore:"+path, Deps{})
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			if err := b.Deliver(context.Background(), ev); err != nil {
				t.Fatal(err)
			}
			got, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tc.want {
				t.Fatalf("line = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestFlatstoreSocketErrors(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct{ socket, want string }{
		{"flatstore:", "no file"},
		{"flatstore:" + dir + "/missing/x.log", "create it first"},
		{"flatstore:" + dir, "is a directory"},
	} {
		_, err := NewBackend(tc.socket, Deps{})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("NewBackend(%q) = %v, want an error saying %q", tc.socket, err, tc.want)
		}
	}
	// The factory must not create the file: `sipside check` builds backends.
	b, err := NewBackend("flatstore:"+dir+"/later.log", Deps{})
	if err != nil {
		t.Fatal(err)
	}
	b.Close()
	if _, err := os.Stat(dir + "/later.log"); !os.IsNotExist(err) {
		t.Fatalf("the factory touched the file: %v", err)
	}
}

// logrotate moves the file, then sipside gets SIGHUP: new lines must go to a
// new file at the old path, and none may be lost in between.
func TestFlatstoreReopenAfterRotation(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "ul.log")
	b, err := NewBackend("virtual:PARALLEL flatstore:"+path+" stdout:", Deps{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	deliver := func(p string) {
		t.Helper()
		if err := b.Deliver(ctx, &Event{Name: "E_X", Params: []byte(p)}); err != nil {
			t.Fatal(err)
		}
	}
	deliver(`["before"]`)
	if err := os.Rename(path, path+".1"); err != nil {
		t.Fatal(err)
	}
	deliver(`["rotated, not reopened"]`)
	if err := ReopenBackend(b); err != nil {
		t.Fatal(err)
	}
	deliver(`["after"]`)
	for file, want := range map[string]string{
		path + ".1": "E_X,before\nE_X,rotated  not reopened\n",
		path:        "E_X,after\n",
	} {
		got, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != want {
			t.Errorf("%s = %q, want %q", file, got, want)
		}
	}
}

// A full disk is a failed delivery, reported as such.
func TestFlatstoreWriteErrorFails(t *testing.T) {
	if _, err := os.Stat("/dev/full"); err != nil {
		t.Skip("no /dev/full")
	}
	b, err := NewBackend("flatstore:/dev/full", Deps{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if err := b.Deliver(context.Background(), &Event{Name: "E_X"}); err == nil {
		t.Fatal("Deliver to /dev/full succeeded")
	}
}
