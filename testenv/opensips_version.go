package testenv

import (
	"time"

	"github.com/valyala/fastjson"
)

// osipsEmuServer is the "Server" of MI version as the recorded OpenSIPS 3.6.8 answered it.
const osipsEmuServer = "OpenSIPS (3.6.8 (x86_64/linux))"

// Version is the "Server" string of MI version ("OpenSIPS (3.4.18 (x86_64/linux))"), asked
// of the real OpenSIPS or the emulator's recording, so that tests compare sipside's output
// with the proxy that runs and not with the release they were written on.
func (o *OpenSIPSServer) Version() string {
	o.t.Helper()
	if o.real == nil {
		return osipsEmuServer
	}
	res, err := o.real.call("version", nil, 5*time.Second)
	if err != nil {
		o.t.Fatalf("testenv: OpenSIPS MI version: %v", err)
	}
	var p fastjson.Parser
	v, err := p.ParseBytes(res)
	if err != nil || len(v.GetStringBytes("Server")) == 0 {
		o.t.Fatalf("testenv: OpenSIPS MI version: no \"Server\" in %s (%v)", res, err)
	}
	return string(v.GetStringBytes("Server"))
}
