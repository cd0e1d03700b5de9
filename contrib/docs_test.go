package contrib_test

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/sipside/sipside/testenv"
)

// fence is one fenced block of a Markdown file.
type fence struct {
	file, lang, text string
	line             int
}

// fences returns the fenced blocks of every README of the repository.
func fences(t *testing.T) []fence {
	t.Helper()
	var out []fence
	for _, f := range readmes(t) {
		data := readFile(t, f)
		var cur *fence
		for i, line := range strings.Split(data, "\n") {
			switch {
			case cur == nil && strings.HasPrefix(line, "```"):
				cur = &fence{file: f, lang: strings.TrimPrefix(line, "```"), line: i + 2}
			case cur != nil && strings.HasPrefix(line, "```"):
				out = append(out, *cur)
				cur = nil
			case cur != nil:
				cur.text += line + "\n"
			}
		}
	}
	return out
}

func readmes(t *testing.T) []string {
	t.Helper()
	out, err := exec.Command("git", "-C", root, "ls-files", "README.md", "*/README.md").Output()
	if err != nil {
		t.Fatal(err)
	}
	return strings.Fields(string(out))
}

// Every TOML block of the READMEs is a config that `sipside check` passes,
// unless its first line says it is a fragment (then it must still parse).
func TestReadmeConfigBlocks(t *testing.T) {
	bin := sipsideBin(t)
	n := 0
	for _, f := range fences(t) {
		if f.lang != "toml" {
			continue
		}
		n++
		name := fmt.Sprintf("%s:%d", f.file, f.line)
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "sipside.toml")
			if err := os.WriteFile(path, []byte(f.text), 0o644); err != nil {
				t.Fatal(err)
			}
			if strings.HasPrefix(f.text, "# fragment") {
				var v map[string]any
				if _, err := toml.Decode(f.text, &v); err != nil {
					t.Errorf("fragment at %s is not TOML: %v", name, err)
				}
				return
			}
			out, err := exec.Command(bin, "check", "-c", path).CombinedOutput()
			if err != nil {
				t.Errorf("sipside check of the block at %s: %v\n%s", name, err, out)
			}
		})
	}
	if n == 0 {
		t.Fatal("no toml block found in any README")
	}
}

// The README's first example, run as a new user would: the default config,
// an event sent with bash (no netcat on a fresh Debian), the line it prints.
func TestReadmeQuickstart(t *testing.T) {
	var send, printed string
	for _, f := range fences(t) {
		if f.file == "README.md" && f.lang == "sh" && strings.Contains(f.text, "/dev/udp/") {
			lines := strings.Split(strings.TrimSpace(f.text), "\n")
			send = lines[0]
			printed = strings.TrimPrefix(lines[len(lines)-1], "# ")
			break
		}
	}
	if send == "" {
		t.Fatal("README.md: no sh block that sends an event to /dev/udp/")
	}
	if _, err := exec.LookPath("bash"); err != nil {
		testenv.Missing(t, "bash", "apt-get install bash")
		return
	}
	// The embedded default config on free ports: the README's port is
	// replaced in the command, nothing else.
	port := testenv.FreePort(t, "udp", "127.0.0.1")
	cfg := filepath.Join(t.TempDir(), "sipside.toml")
	os.WriteFile(cfg, []byte(fmt.Sprintf("[http]\nlisten = \"127.0.0.1:%d\"\n[[input]]\nlisten = \"udp:127.0.0.1:%d\"\n[[route]]\nto = \"stdout:\"\n",
		testenv.FreePort(t, "tcp", "127.0.0.1"), port)), 0o644)
	cmd := exec.Command(sipsideBin(t), "run", "-c", cfg)
	stdout, _ := cmd.StdoutPipe()
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	lines := make(chan string, 4)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	send = strings.ReplaceAll(send, "/8090", fmt.Sprintf("/%d", port))
	deadline := time.Now().Add(10 * time.Second)
	for {
		if out, err := exec.Command("bash", "-c", send).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", send, err, out)
		}
		select {
		case got := <-lines:
			// Same members, same values, but the time of receipt and the port.
			want := strings.ReplaceAll(printed, ":8090", fmt.Sprintf(":%d", port))
			i, j := strings.Index(got, `"received":`), strings.Index(want, `"received":`)
			if i < 0 || j < 0 || got[:i] != want[:j] || !strings.HasSuffix(got, want[strings.Index(want, `,"source"`):]) {
				t.Fatalf("sipside printed\n%s\nthe README says\n%s", got, printed)
			}
			return
		case <-time.After(200 * time.Millisecond):
			if time.Now().After(deadline) {
				t.Fatalf("nothing printed; stderr:\n%s", stderr.String())
			}
		}
	}
}

// The README's example of a bad config gets exactly the errors the README
// shows after it.
func TestReadmeConfigErrors(t *testing.T) {
	var bad, shown string
	fs := fences(t)
	for i, f := range fs {
		if f.file == "README.md" && f.lang == "toml" && strings.HasPrefix(f.text, "# fragment: deliberately wrong") && i+1 < len(fs) {
			bad, shown = f.text, fs[i+1].text
			break
		}
	}
	if bad == "" {
		t.Fatal("README.md: no '# fragment: deliberately wrong' toml block followed by its errors")
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "sipside.toml")
	if err := os.WriteFile(path, []byte(bad), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(sipsideBin(t), "check", "sipside.toml")
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if code := cmd.ProcessState.ExitCode(); code != 1 {
		t.Errorf("exit %d (%v), the README says 1", code, err)
	}
	if string(out) != shown {
		t.Errorf("sipside check prints\n%s\nthe README shows\n%s", out, shown)
	}
}
