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

// EventIDs is events_list of the running OpenSIPS (name -> id), or the emulator's, which is
// the recorded 3.6.8 lab's. The ids depend on the release and the modules loaded: OpenSIPS
// 3.4 and 3.5 have no E_FLATSTORE_ROTATION, so every later event's id is one lower there.
func (o *OpenSIPSServer) EventIDs() map[string]int {
	o.t.Helper()
	ids := map[string]int{}
	if o.real == nil {
		o.emu.mu.Lock()
		defer o.emu.mu.Unlock()
		for i, name := range o.emu.events {
			ids[name] = i
		}
		return ids
	}
	res, err := o.real.call("events_list", nil, 5*time.Second)
	if err != nil {
		o.t.Fatalf("testenv: OpenSIPS MI events_list: %v", err)
	}
	var p fastjson.Parser
	v, err := p.ParseBytes(res)
	if err != nil {
		o.t.Fatalf("testenv: OpenSIPS MI events_list: %q: %v", res, err)
	}
	for _, ev := range v.GetArray("Events") {
		ids[string(ev.GetStringBytes("name"))] = ev.GetInt("id")
	}
	return ids
}
