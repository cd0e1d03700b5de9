package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"syscall"

	"github.com/sipside/sipside/dmq"
	"github.com/sipside/sipside/evi"
	"github.com/sipside/sipside/internal/config"
	"github.com/sipside/sipside/kazoo"
)

// hostProblems is what `sipside run` would refuse on this machine although
// the file is well formed: an address no interface has, a unix socket in a
// directory that does not exist, a spool directory that cannot be created.
// `sipside check` reports it too, so that check passes only what run starts.
// Addresses in use are not problems: the sipside being checked may hold them.
func hostProblems(cfg *Config, p *config.Problems) {
	for i, in := range cfg.Input {
		l, err := evi.ParseListen(in.Listen)
		if err != nil {
			continue // reported with the file's problems
		}
		switch l.Proto {
		case "udp", "tcp":
			p.Index("input", i).AddErr("listen", canBind(l.Proto, l.Addr))
		case "unix":
			p.Index("input", i).AddErr("listen", dirExists(filepath.Dir(l.Addr), "the socket's directory"))
		}
	}
	if cfg.HTTP.Listen != "off" {
		p.At("http").AddErr("listen", canBind("tcp", cfg.HTTP.Listen))
	}
	if cfg.Spool.Dir != "" {
		p.At("spool").AddErr("dir", canCreateDir(cfg.Spool.Dir))
	}
	if cfg.dmqEnabled() {
		if a, err := dmq.ParseNodeAddr(cfg.DMQ.Listen); err == nil {
			proto := "udp"
			if a.Transport == "tcp" {
				proto = "tcp"
			}
			p.At("dmq").AddErr("listen", canBind(proto, net.JoinHostPort(a.Host, fmt.Sprint(a.Port))))
		}
	}
	for i, spec := range cfg.JSONRPC.Listen {
		if _, addr, err := kazoo.ParseListen(spec); err == nil {
			p.At("jsonrpc").AddErr(fmt.Sprintf("listen[%d]", i), canBind("tcp", addr))
		}
	}
}

// canBind binds addr and lets it go at once; in use is fine.
func canBind(proto, addr string) error {
	var err error
	if proto == "udp" {
		var c net.PacketConn
		if c, err = net.ListenPacket("udp", addr); err == nil {
			c.Close()
		}
	} else {
		var l net.Listener
		if l, err = net.Listen("tcp", addr); err == nil {
			l.Close()
		}
	}
	if err == nil || errors.Is(err, syscall.EADDRINUSE) {
		return nil
	}
	if errors.Is(err, syscall.EADDRNOTAVAIL) {
		return fmt.Errorf("%s: no interface of this machine has that address (%v)", addr, unwrapSyscall(err))
	}
	return fmt.Errorf("%s: %v", addr, unwrapSyscall(err))
}

func unwrapSyscall(err error) error {
	var se *os.SyscallError
	if errors.As(err, &se) {
		return se
	}
	return err
}

func dirExists(dir, what string) error {
	st, err := os.Stat(dir)
	switch {
	case err != nil:
		return fmt.Errorf("%s %s: %w (create it first)", what, dir, unwrapPath(err))
	case !st.IsDir():
		return fmt.Errorf("%s %s is not a directory", what, dir)
	}
	return nil
}

// canCreateDir tells whether dir exists as a writable directory or can be
// created: its nearest existing parent is a directory this process may write.
func canCreateDir(dir string) error {
	d := filepath.Clean(dir)
	for {
		st, err := os.Stat(d)
		if err == nil {
			if !st.IsDir() {
				return fmt.Errorf("%s: %s is not a directory", dir, d)
			}
			if err := syscall.Access(d, 2 /* W_OK */); err != nil {
				if d == filepath.Clean(dir) {
					return fmt.Errorf("%s: not writable by this user (%v)", dir, err)
				}
				return fmt.Errorf("%s: cannot be created: %s is not writable by this user (%v)", dir, d, err)
			}
			return nil
		}
		// ENOTDIR: a parent is a file; walking up finds it and says so.
		if !errors.Is(err, os.ErrNotExist) && !errors.Is(err, syscall.ENOTDIR) {
			return fmt.Errorf("%s: %w", dir, unwrapPath(err))
		}
		parent := filepath.Dir(d)
		if parent == d {
			return fmt.Errorf("%s: no existing parent directory", dir)
		}
		d = parent
	}
}

func unwrapPath(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}
