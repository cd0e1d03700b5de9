package main

import (
	"fmt"
	"html/template"
	"io"
	"net/http"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/sipside/sipside/evi"
)

// status is what /api/status serves, `sipside events status` prints and
// the page at / shows.
type status struct {
	Version       string                  `json:"version"`
	Started       time.Time               `json:"started"`
	Inputs        []evi.InputStatus       `json:"inputs"`
	Routes        []evi.RouteStatus       `json:"routes"`
	Subscriptions []evi.SubscriptionState `json:"subscriptions"`
	Sections      []statusSection         `json:"sections,omitempty"`
}

// statusSection is a part of the daemon (DMQ, AMQP) that reports itself as
// a table, so that the page needs no knowledge of each package.
type statusSection struct {
	Title string     `json:"title"`
	Note  string     `json:"note,omitempty"`
	Head  []string   `json:"head"`
	Rows  [][]string `json:"rows"`
}

func (d *daemon) status() status {
	st := status{Version: version(), Started: d.started, Subscriptions: d.subs.states(), Routes: []evi.RouteStatus{}}
	st.Inputs = []evi.InputStatus{}
	if d.pipe != nil {
		st.Inputs = d.pipe.InputStatuses()
		st.Routes = d.pipe.Routes()
	}
	if st.Subscriptions == nil {
		st.Subscriptions = []evi.SubscriptionState{}
	}
	d.partsMu.Lock()
	sections := d.sections
	d.partsMu.Unlock()
	for _, f := range sections {
		st.Sections = append(st.Sections, f())
	}
	return st
}

// statusTmpl is plain server-rendered HTML with no external assets: the
// page must work on a box with no internet, behind any proxy.
var statusTmpl = template.Must(template.New("status").Funcs(template.FuncMap{
	"ago": func(t time.Time) string {
		if t.IsZero() {
			return "—"
		}
		d := time.Until(t).Round(time.Second)
		if d < 0 {
			return (-d).String() + " ago"
		}
		return "in " + d.String()
	},
}).Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="5">
<title>sipside status</title>
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.6em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.4em 0}td,th{border:1px solid #ddd;padding:.25em .6em;text-align:left}
th{background:#f4f4f4}.ok{color:#176b2c;font-weight:bold}.bad{color:#b00020;font-weight:bold}.muted{color:#777}
code{font-size:.95em}
</style></head><body>
<h1>sipside {{.Version}}</h1>
<p class="muted">started {{ago .Started}} · <a href="/metrics">/metrics</a> · <a href="/api/status">/api/status</a> · refreshes every 5 s</p>

<h2 id="inputs">Inputs</h2>
{{if .Inputs}}<table><tr><th>listen</th><th>received</th><th>invalid</th></tr>{{range .Inputs}}<tr><td><code>{{.Listen}}</code></td><td>{{.Received}}</td><td class="{{if .Invalid}}bad{{end}}">{{.Invalid}}</td></tr>{{end}}</table>
{{else}}<p class="muted">no inputs</p>{{end}}

<h2 id="subscriptions">Subscriptions</h2>
{{if .Subscriptions}}<table><tr><th>target</th><th>event</th><th>socket</th><th>state</th><th>expires</th><th>last error</th></tr>
{{range .Subscriptions}}<tr><td><code>{{.Target}}</code></td><td>{{.Event}}</td><td><code>{{.Socket}}</code></td>
<td class="{{if eq .State "active"}}ok{{else}}bad{{end}}">{{.State}}</td><td>{{ago .Expires}}</td><td>{{.LastError}}</td></tr>{{end}}</table>
{{else}}<p class="muted">none configured ([[subscribe]])</p>{{end}}

<h2 id="routes">Routes and backends</h2>
{{if .Routes}}<table><tr><th>route</th><th>events</th><th>to</th><th>queued</th><th>in spool</th><th>spooled</th><th>replayed</th><th>undelivered</th><th>queue full</th></tr>
{{range .Routes}}<tr><td>{{.Name}}</td><td>{{range $i, $e := .Events}}{{if $i}}, {{end}}{{$e}}{{end}}</td><td><code>{{.To}}</code></td>
<td>{{.Queued}}</td><td class="{{if .Spooled}}bad{{else}}ok{{end}}">{{.Spooled}}</td><td>{{.SpooledTotal}}</td><td>{{.Replayed}}</td><td class="{{if .Failed}}bad{{end}}">{{.Failed}}</td><td>{{.QueueFull}}</td></tr>{{end}}</table>
<table id="backends"><tr><th>route</th><th>backend</th><th>state</th><th>delivered</th><th>failed</th></tr>
{{range $r := .Routes}}{{range .Backends}}<tr><td>{{$r.Name}}</td><td><code>{{.Name}}</code></td>
<td>{{if .InUse}}<span class="ok">in use</span>{{else if not .SkippedUntil.IsZero}}<span class="bad">skipped (failover_timeout) until {{.SkippedUntil.Format "15:04:05"}}</span>{{else if $r.Policy}}{{$r.Policy}} member{{else}}—{{end}}</td>
<td>{{.Delivered}}</td><td class="{{if .Failed}}bad{{end}}">{{.Failed}}</td></tr>{{end}}{{end}}</table>
{{else}}<p class="muted">no routes</p>{{end}}

{{range .Sections}}<h2>{{.Title}}</h2>
{{if .Note}}<p class="muted">{{.Note}}</p>{{end}}
{{if .Rows}}<table><tr>{{range .Head}}<th>{{.}}</th>{{end}}</tr>{{range .Rows}}<tr>{{range .}}<td>{{.}}</td>{{end}}</tr>{{end}}</table>
{{else}}<p class="muted">nothing yet</p>{{end}}
{{end}}
</body></html>
`))

func (d *daemon) statusPage(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	if err := statusTmpl.Execute(w, d.status()); err != nil {
		d.log.Debug("status page", "error", err)
	}
}

// writeStatusText prints st as `sipside events status` shows it: the status
// page's tables as aligned text.
func writeStatusText(w io.Writer, st status, now time.Time) {
	ago := func(t time.Time) string {
		if t.IsZero() {
			return "—"
		}
		d := t.Sub(now).Round(time.Second)
		if d < 0 {
			return (-d).String() + " ago"
		}
		return "in " + d.String()
	}
	fmt.Fprintf(w, "sipside %s, started %s\n", st.Version, ago(st.Started))
	tw := tabwriter.NewWriter(w, 2, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "\nINPUT\tRECEIVED\tINVALID")
	for _, in := range st.Inputs {
		fmt.Fprintf(tw, "%s\t%d\t%d\n", in.Listen, in.Received, in.Invalid)
	}
	if len(st.Subscriptions) > 0 {
		fmt.Fprintln(tw, "\nSUBSCRIPTION\tTARGET\tSOCKET\tSTATE\tEXPIRES\tLAST ERROR")
		for _, sb := range st.Subscriptions {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", sb.Event, sb.Target, sb.Socket, sb.State, ago(sb.Expires), sb.LastError)
		}
	}
	fmt.Fprintln(tw, "\nROUTE\tTO\tQUEUED\tIN SPOOL\tSPOOLED\tREPLAYED\tUNDELIVERED\tQUEUE FULL")
	for _, r := range st.Routes {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%d\t%d\t%d\n", r.Name, r.To, r.Queued, r.Spooled, r.SpooledTotal, r.Replayed, r.Failed, r.QueueFull)
	}
	fmt.Fprintln(tw, "\nROUTE\tBACKEND\tSTATE\tDELIVERED\tFAILED")
	for _, r := range st.Routes {
		for _, b := range r.Backends {
			state := "—"
			switch {
			case b.InUse:
				state = "in use"
			case !b.SkippedUntil.IsZero():
				state = "skipped (failover_timeout) until " + b.SkippedUntil.Local().Format("15:04:05")
			case r.Policy != "":
				state = r.Policy + " member"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\n", r.Name, b.Name, state, b.Delivered, b.Failed)
		}
	}
	for _, sec := range st.Sections {
		fmt.Fprintf(tw, "\n%s", strings.ToUpper(sec.Title))
		if sec.Note != "" {
			fmt.Fprintf(tw, " (%s)", sec.Note)
		}
		fmt.Fprintln(tw)
		if len(sec.Rows) == 0 {
			continue
		}
		fmt.Fprintln(tw, strings.ToUpper(strings.Join(sec.Head, "\t")))
		for _, row := range sec.Rows {
			fmt.Fprintln(tw, strings.Join(row, "\t"))
		}
	}
	tw.Flush()
}
