package testenv

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// kamailioHowTo is what Missing tells a user without a usable Kamailio: Debian's
// packages, or the variable that selects a build of one's own.
const kamailioHowTo = kamailioInstall + ", or set KAMAILIO_BIN=/PREFIX/sbin/kamailio for another build"

// KamailioBuild is the Kamailio the tests run: $KAMAILIO_BIN, else kamailio in PATH, else
// Debian's /usr/sbin/kamailio, with the modules directory it loads from.
type KamailioBuild struct {
	Bin        string // the kamailio binary
	ModulesDir string // with a trailing slash
	Version    string // "kamailio 6.0.7 (x86_64/linux)" as `kamailio -v` prints it
	Env        bool   // chosen by KAMAILIO_BIN, not the Debian default
}

var kamBuild struct {
	once sync.Once
	b    KamailioBuild
	err  error
}

// FindKamailio returns the Kamailio the tests run. The modules directory is
// $KAMAILIO_MODULES, else the one the binary was built with ("Default paths to modules"
// in `kamailio -I`), so that a build installed under any prefix needs only KAMAILIO_BIN.
// A missing binary is ErrNotInstalled.
func FindKamailio() (KamailioBuild, error) {
	kamBuild.once.Do(func() { kamBuild.b, kamBuild.err = findKamailio() })
	return kamBuild.b, kamBuild.err
}

// NeedKamailio is FindKamailio for a test that runs kamailio itself: without one it calls
// Missing (skip, or fail with CI=true); a KAMAILIO_BIN that does not work fails the test.
func NeedKamailio(t testing.TB) KamailioBuild {
	t.Helper()
	b, err := FindKamailio()
	if errors.Is(err, ErrNotInstalled) {
		Missing(t, "kamailio", kamailioHowTo)
	} else if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	return b
}

func findKamailio() (KamailioBuild, error) {
	var b KamailioBuild
	if bin := os.Getenv("KAMAILIO_BIN"); bin != "" {
		if _, err := os.Stat(bin); err != nil {
			// Set but wrong is a mistake to report, not a reason to test Debian's build.
			return b, fmt.Errorf("KAMAILIO_BIN=%s: %w", bin, err)
		}
		b.Bin, b.Env = bin, true
	} else if p, err := exec.LookPath("kamailio"); err == nil {
		b.Bin = p
	} else if _, err := os.Stat("/usr/sbin/kamailio"); err == nil {
		b.Bin = "/usr/sbin/kamailio"
	} else {
		return b, fmt.Errorf("kamailio binary not in PATH nor at /usr/sbin/kamailio: %w", ErrNotInstalled)
	}
	// -I prints the build's constants and exits; it reads no config.
	out, err := exec.Command(b.Bin, "-I").CombinedOutput()
	if err != nil {
		return b, fmt.Errorf("%s -I: %w\n%s", b.Bin, err, out)
	}
	b.Version, b.ModulesDir = parseKamailioInternals(out)
	if b.Version == "" {
		return b, fmt.Errorf("%s -I: no \"Version:\" line in %q", b.Bin, out)
	}
	if d := os.Getenv("KAMAILIO_MODULES"); d != "" {
		b.ModulesDir = d
	}
	if b.ModulesDir == "" {
		b.ModulesDir = KamailioModulesDir
	}
	if !strings.HasSuffix(b.ModulesDir, "/") {
		b.ModulesDir += "/"
	}
	return b, nil
}

// parseKamailioInternals reads `kamailio -I`: the version and the first directory of
// "Default paths to modules" (a colon-separated list) that holds tm.so, the module
// every template loads; without one, the first directory listed.
func parseKamailioInternals(out []byte) (version, modules string) {
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		key, val, ok := strings.Cut(strings.TrimSpace(sc.Text()), ":")
		if !ok {
			continue
		}
		val = strings.TrimSpace(val)
		switch key {
		case "Version":
			version = val
		case "Default paths to modules":
			dirs := strings.Split(val, ":")
			modules = dirs[0]
			for _, d := range dirs {
				if _, err := os.Stat(filepath.Join(d, "tm.so")); err == nil {
					modules = d
					break
				}
			}
		}
	}
	return version, modules
}
