package testenv

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// The emulator's MI transports: mi_datagram, mi_http and mi_fifo, with the
// limits and quirks of the 3.6.8 modules.

func (e *osipsEmu) serveDatagram(c net.PacketConn) {
	e.closers = append(e.closers, c)
	// mi_datagram answers a unix request from a second, unbound socket (SOURCE.md
	// 7.2), so a client that connect(2)s its socket to the MI path gets nothing:
	// Linux refuses (EPERM) a datagram to a connected socket from anyone but its
	// peer. The emulator does the same, so that such a client fails here too.
	tx := c
	if _, ok := c.(*net.UnixConn); ok {
		u, err := unboundUnixgram()
		if err != nil {
			panic(fmt.Sprintf("opensips emulator: mi_datagram reply socket: %v", err))
		}
		e.closers = append(e.closers, u)
		tx = u
	}
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		// A longer datagram is cut to the buffer, as recvfrom does, and then fails to parse.
		buf := make([]byte, osipsDatagramBuf)
		for {
			n, from, err := c.ReadFrom(buf)
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				continue
			}
			out := e.handle(buf[:n])
			var reply []byte
			switch {
			case out.parseError:
				reply = []byte("400 Parse_error")
			case out.internalError:
				reply = []byte("500 Internal error")
			case out.reply == nil:
				continue
			case len(out.reply) > osipsDatagramBuf:
				reply = []byte("500 Internal error")
			default:
				reply = out.reply
			}
			if from == nil || from.String() == "" {
				continue // an unbound unix client: the reply has nowhere to go
			}
			_, _ = tx.WriteTo(reply, from)
		}
	}()
}

func (e *osipsEmu) serveHTTP(l net.Listener) {
	e.closers = append(e.closers, l)
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		for {
			conn, err := l.Accept()
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				continue
			}
			e.wg.Add(1)
			go func() {
				defer e.wg.Done()
				e.serveHTTPConn(conn)
			}()
		}
	}()
}

func (e *osipsEmu) serveHTTPConn(conn net.Conn) {
	defer conn.Close()
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		select {
		case <-e.done:
			conn.Close()
		case <-stop:
		}
	}()
	req, err := http.ReadRequest(bufio.NewReader(conn))
	if err != nil {
		return
	}
	body, _ := io.ReadAll(io.LimitReader(req.Body, 16<<20))
	date := time.Now().UTC().Format(http.TimeFormat)
	// hang writes a head whose chunked body never ends, as mi_http does for GET and
	// notifications, and waits for the client to give up.
	hang := func(status string) {
		fmt.Fprintf(conn, "HTTP/1.1 %s\r\nDate: %s\r\nConnection: close\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n", status, date)
		_, _ = io.Copy(io.Discard, conn)
	}
	if req.URL.Path != "/mi" && req.URL.Path != "/mi/" {
		const page = "<html><body>Unable to parse URL!</body></html>"
		fmt.Fprintf(conn, "HTTP/1.1 400 Bad Request\r\nDate: %s\r\nConnection: close\r\nContent-Type: text/html\r\nContent-Length: %d\r\n\r\n%s", date, len(page), page)
		return
	}
	if req.Method != http.MethodPost {
		hang("405 Method Not Allowed")
		return
	}
	if mt, _, err := mime.ParseMediaType(req.Header.Get("Content-Type")); err != nil || mt != "application/json" {
		return // httpd closes without a byte: "missing Content-Type header"
	}
	if len(body) == 0 {
		fmt.Fprintf(conn, "HTTP/1.1 400 Bad Request\r\nDate: %s\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: 0\r\n\r\n", date)
		return
	}
	out := e.handle(body)
	var reply []byte
	switch {
	case out.parseError:
		reply = []byte(`{"jsonrpc":"2.0","error":{"code":-32700,"message":"Parse error"},"id":null}`)
	case out.internalError:
		fmt.Fprintf(conn, "HTTP/1.1 500 Internal Server Error\r\nDate: %s\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: 0\r\n\r\n", date)
		return
	case out.reply == nil:
		hang("202 Accepted")
		return
	default:
		reply = out.reply
	}
	fmt.Fprintf(conn, "HTTP/1.1 200 OK\r\nDate: %s\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n", date, len(reply))
	_, _ = conn.Write(reply)
}

// osipsFIFOBuf is mi_fifo's MAX_MI_FIFO_BUFFER: the longest request line.
const osipsFIFOBuf = 4096

func (e *osipsEmu) serveFIFO(path, replyDir string) error {
	if err := syscall.Mkfifo(path, 0o666); err != nil {
		return fmt.Errorf("opensips emulator: mkfifo %s: %w", path, err)
	}
	// Read-write, so that the read end never sees EOF between clients.
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("opensips emulator: open %s: %w", path, err)
	}
	e.closers = append(e.closers, f)
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		r := bufio.NewReaderSize(f, 64<<10)
		for {
			line, err := r.ReadBytes('\n')
			if err != nil {
				return
			}
			if len(line) > osipsFIFOBuf {
				// mi_fifo reads at most MAX_MI_FIFO_BUFFER bytes at a time; a longer
				// request fails to parse and its tail "must begin with ':'" (both
				// dropped, no reply; seen on 3.6.8).
				continue
			}
			e.fifoLine(bytes.TrimRight(line, "\n"), replyDir)
		}
	}()
	return nil
}

// fifoLine handles ":reply_name:json"; "::json" wants no reply.
func (e *osipsEmu) fifoLine(line []byte, replyDir string) {
	if len(line) == 0 || line[0] != ':' {
		return
	}
	name, req, ok := bytes.Cut(line[1:], []byte(":"))
	if !ok || bytes.ContainsAny(name, "./\\") {
		return // "forbidden filename", "error trimming filename"
	}
	out := e.handle(req)
	if len(name) == 0 || out.parseError || (out.reply == nil && !out.internalError) {
		return
	}
	reply := out.reply
	if out.internalError {
		reply = []byte("failed to build response")
	}
	w, err := os.OpenFile(filepath.Join(replyDir, string(name)), os.O_WRONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return
	}
	defer w.Close()
	// mi_fifo streams the reply in chunks; the client must read until the value ends.
	for len(reply) > 0 {
		n := min(len(reply), 4096)
		if _, err := w.Write(reply[:n]); err != nil {
			return
		}
		reply = reply[n:]
	}
}
