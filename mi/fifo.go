package mi

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/valyala/fastjson"
)

// fifo is the mi_fifo / jsonrpcs FIFO transport. Each call makes its own reply FIFO,
// so concurrent calls never share a reply stream.
type fifo struct {
	t         Target
	replyDirs []string
	seq       atomic.Uint64
	wmu       sync.Mutex // one request line at a time, so that long ones never interleave
}

// maxFIFOLineOpenSIPS is mi_fifo's MAX_MI_FIFO_BUFFER. mi_fifo parses what one
// read of at most that many bytes returns, so a longer request line fails to
// parse, its tail is refused, and the caller would only see a timeout.
const maxFIFOLineOpenSIPS = 4096

// maxFIFOLineKamailio: jsonrpcs reads a FIFO document byte by byte until its
// braces balance, into 8192 bytes (JSONRPC_BUF_IN_SIZE), and gives up at 8191
// counting the newline left before it by the previous request; our request and
// its newline must stay within 8190. A longer one is dropped, and the reader
// then resumes inside it, out of step with the quotes and braces, swallowing
// the requests after it (seen on 5.6.3).
const maxFIFOLineKamailio = 8190

// moduleReplyDir is both modules' default reply directory (mi_fifo reply_dir,
// jsonrpcs fifo_reply_dir).
const moduleReplyDir = "/tmp"

// newFIFO: the proxy writes the reply into its own reply directory, which we cannot
// ask it for. Without an explicit one, the reply FIFO is made both beside the
// request FIFO (where configs that set reply_dir usually put it) and in the modules'
// default /tmp, and the first to get a reply wins.
func newFIFO(t Target, replyDir string) *fifo {
	if replyDir != "" {
		return &fifo{t: t, replyDirs: []string{filepath.Clean(replyDir)}}
	}
	dirs := []string{filepath.Dir(t.Addr)}
	if dirs[0] != moduleReplyDir {
		dirs = append(dirs, moduleReplyDir)
	}
	return &fifo{t: t, replyDirs: dirs}
}

// replyFIFO is one reply FIFO made for one call.
type replyFIFO struct {
	path string
	f    *os.File
}

func (f *fifo) makeReplyFIFOs(name string) ([]replyFIFO, error) {
	var (
		out  []replyFIFO
		errs []error
	)
	for _, dir := range f.replyDirs {
		path := filepath.Join(dir, name)
		_ = os.Remove(path)
		if err := syscall.Mkfifo(path, 0o666); err != nil {
			errs = append(errs, err)
			continue
		}
		// The proxy may run as another user; mkfifo's mode is cut by our umask.
		_ = os.Chmod(path, 0o666)
		// Opened read-write so the read never sees EOF between the proxy's open and its
		// first write; the reply ends when the bytes form one complete JSON value.
		rf, err := os.OpenFile(path, os.O_RDWR, 0)
		if err != nil {
			_ = os.Remove(path)
			errs = append(errs, err)
			continue
		}
		out = append(out, replyFIFO{path: path, f: rf})
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("make reply FIFO %s in %v: %w (is --reply-dir the proxy's reply directory, and writable?)", name, f.replyDirs, errors.Join(errs...))
	}
	return out, nil
}

func (f *fifo) roundTrip(ctx context.Context, id uint32, method string, params []byte) ([]byte, error) {
	name := "sipside_reply_" + strconv.Itoa(os.Getpid()) + "_" + strconv.FormatUint(f.seq.Add(1), 10)
	rfs, err := f.makeReplyFIFOs(name)
	if err != nil {
		return nil, err
	}
	defer func() {
		for _, r := range rfs {
			r.f.Close()
			_ = os.Remove(r.path)
		}
	}()

	var line []byte
	if f.t.Dialect == Kamailio {
		line = append(encodeRequest(Kamailio, method, params, id, name), '\n')
	} else {
		line = append([]byte(":"+name+":"), encodeRequest(OpenSIPS, method, params, id, "")...)
		line = append(line, '\n')
	}
	if f.t.Dialect == OpenSIPS && len(line) > maxFIFOLineOpenSIPS {
		return nil, fmt.Errorf("request is %d bytes, over the %d an OpenSIPS mi_fifo request takes (MAX_MI_FIFO_BUFFER; a longer one is dropped without a reply): use http or a datagram for it", len(line), maxFIFOLineOpenSIPS)
	}
	if f.t.Dialect == Kamailio && len(line) > maxFIFOLineKamailio {
		return nil, fmt.Errorf("request is %d bytes, over the %d a Kamailio jsonrpcs FIFO request takes (JSONRPC_BUF_IN_SIZE; a longer one is dropped and garbles the requests after it): use http or a datagram for it", len(line), maxFIFOLineKamailio)
	}
	if err := f.send(ctx, line); err != nil {
		return nil, err
	}
	type result struct {
		body []byte
		err  error
	}
	results := make(chan result, len(rfs))
	for _, r := range rfs {
		if dl, ok := ctx.Deadline(); ok {
			_ = r.f.SetReadDeadline(dl)
		}
		go func() {
			body, err := readFIFOReply(r.f)
			if err != nil {
				err = fmt.Errorf("read reply FIFO %s: %w", r.path, err)
			}
			results <- result{body, err}
		}()
	}
	var firstErr error
	for range rfs {
		select {
		case r := <-results:
			if r.err == nil {
				f.unblock(rfs)
				return r.body, nil
			}
			// the reads end at the call's deadline, a moment before ctx says so
			if ctx.Err() != nil || errors.Is(r.err, os.ErrDeadlineExceeded) {
				f.unblock(rfs)
				return nil, context.DeadlineExceeded
			}
			if firstErr == nil {
				firstErr = r.err
			}
		case <-ctx.Done():
			f.unblock(rfs)
			return nil, ctx.Err()
		}
	}
	return nil, firstErr
}

// unblock ends the reads still waiting on the other reply FIFOs.
func (f *fifo) unblock(rfs []replyFIFO) {
	for _, r := range rfs {
		_ = r.f.SetReadDeadline(time.Unix(1, 0))
	}
}

// readFIFOReply reads until the bytes form one complete reply: the proxy may write it
// in several chunks (mi_fifo streams big replies) and, with our own write end open,
// the read never ends with EOF.
func readFIFOReply(r io.Reader) ([]byte, error) {
	buf := make([]byte, 0, 4096)
	tmp := make([]byte, 64<<10)
	for {
		n, err := r.Read(tmp)
		buf = append(buf, tmp[:n]...)
		if n > 0 && complete(buf) {
			return buf, nil
		}
		if err != nil {
			return nil, err
		}
	}
}

// complete reports whether b holds one whole JSON value, or a bare text status line.
func complete(b []byte) bool {
	if fastjson.ValidateBytes(b) == nil {
		return true
	}
	return len(b) > 0 && b[0] != '{' && b[len(b)-1] == '\n'
}

func (f *fifo) send(ctx context.Context, line []byte) error {
	f.wmu.Lock()
	defer f.wmu.Unlock()
	// Non-blocking open fails at once with ENXIO when no process reads the FIFO,
	// where a blocking one would hang until the proxy starts.
	w, err := os.OpenFile(f.t.Addr, os.O_WRONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		switch {
		case errors.Is(err, syscall.ENXIO):
			return fmt.Errorf("no process reads the FIFO %s: is the proxy running? (%w)", f.t.Addr, err)
		case errors.Is(err, os.ErrNotExist):
			return fmt.Errorf("no FIFO at %s: check mi_fifo's fifo_name (OpenSIPS) or jsonrpcs fifo_name (Kamailio): %w", f.t.Addr, err)
		}
		return fmt.Errorf("open FIFO %s: %w", f.t.Addr, err)
	}
	defer w.Close()
	if st, err := w.Stat(); err == nil && st.Mode()&os.ModeNamedPipe == 0 {
		return fmt.Errorf("%s is not a FIFO: check the target path", f.t.Addr)
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = w.SetWriteDeadline(dl)
	}
	if _, err := w.Write(line); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("write FIFO %s: %w", f.t.Addr, err)
	}
	return nil
}

func (f *fifo) close() error { return nil }
