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

// fifo is the mi_fifo / jsonrpcs FIFO transport. Each call makes its own reply FIFO
// in the proxy's reply directory, so concurrent calls never share a reply stream.
type fifo struct {
	t        Target
	replyDir string
	seq      atomic.Uint64
	wmu      sync.Mutex // one request line at a time, so that long ones never interleave
}

func newFIFO(t Target, replyDir string) *fifo {
	if replyDir == "" {
		replyDir = filepath.Dir(t.Addr)
	}
	return &fifo{t: t, replyDir: replyDir}
}

func (f *fifo) roundTrip(ctx context.Context, id uint32, method string, params []byte) ([]byte, error) {
	name := "sipside_reply_" + strconv.Itoa(os.Getpid()) + "_" + strconv.FormatUint(f.seq.Add(1), 10)
	path := filepath.Join(f.replyDir, name)
	_ = os.Remove(path)
	if err := syscall.Mkfifo(path, 0o666); err != nil {
		return nil, fmt.Errorf("make reply FIFO %s: %w (is --reply-dir the proxy's reply directory, and writable?)", path, err)
	}
	defer os.Remove(path)
	// The proxy may run as another user; mkfifo's mode is cut by our umask.
	_ = os.Chmod(path, 0o666)
	// Opened read-write so the read never sees EOF between the proxy's open and its
	// first write; the reply ends when the bytes form one complete JSON value.
	rf, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("open reply FIFO %s: %w", path, err)
	}
	defer rf.Close()

	var line []byte
	if f.t.Dialect == Kamailio {
		line = append(encodeRequest(Kamailio, method, params, id, name), '\n')
	} else {
		line = append([]byte(":"+name+":"), encodeRequest(OpenSIPS, method, params, id, "")...)
		line = append(line, '\n')
	}
	if err := f.send(ctx, line); err != nil {
		return nil, err
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = rf.SetReadDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { _ = rf.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	body, err := readFIFOReply(rf)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("read reply FIFO %s: %w", path, err)
	}
	return body, nil
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
