// go_etcd_session: a fixed session of calls through go.etcd.io/etcd/client, the official
// Go client of etcd's v2 API (KeysAPI, Watcher, MembersAPI), run by
// tests/it/etcd_clients.rs against etcd 3.4 and against rota; the two outputs must be the
// same, line for line.
//
// Usage: go_etcd_session http://127.0.0.1:PORT
//
// It works in a fresh key prefix and prints one normalized line per step:
//   - the prefix is printed as "P";
//   - absolute etcd indexes are renumbered by first appearance (#1, #2, ...),
//     in-order key names (20 digits) too; 0 stays 0;
//   - expiration timestamps are printed as presence (exp=yes), with a sanity check;
//   - member ids / cluster ids are removed; the endpoint URL is printed as EP.
//
// scripts/test.sh builds it in GOPATH mode against Debian's golang-etcd-server-dev (no
// network): GO111MODULE=off GOPATH=<dir>:/usr/share/gocode go build.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/client"
)

var (
	ep     string
	prefix string
	idxMap = map[uint64]int{}
	nextID = 1
	step   = 0
)

const sentinel = 999999 // a prevIndex that never matches; printed literally

func ni(i uint64) string {
	if i == 0 {
		return "0"
	}
	if i == sentinel {
		return "999999"
	}
	n, ok := idxMap[i]
	if !ok {
		n = nextID
		nextID++
		idxMap[i] = n
	}
	return "#" + strconv.Itoa(n)
}

var inorderRe = regexp.MustCompile(`/([0-9]{20})$`)
var numRe = regexp.MustCompile(`[0-9]+`)

func nk(k string) string {
	if strings.HasPrefix(k, prefix) {
		k = "P" + k[len(prefix):]
	}
	if m := inorderRe.FindStringSubmatch(k); m != nil {
		v, _ := strconv.ParseUint(m[1], 10, 64)
		k = k[:len(k)-20] + "<" + ni(v) + ">"
	}
	return k
}


func pnode(n *client.Node, depth int) string {
	if n == nil {
		return "nil"
	}
	var b strings.Builder
	b.WriteString("{key=" + nk(n.Key))
	if n.Dir {
		b.WriteString(" dir")
	} else {
		b.WriteString(fmt.Sprintf(" val=%q", n.Value))
	}
	b.WriteString(" c=" + ni(n.CreatedIndex) + " m=" + ni(n.ModifiedIndex))
	if n.TTL != 0 {
		b.WriteString(fmt.Sprintf(" ttl=%d", n.TTL))
	}
	if n.Expiration != nil {
		d := time.Until(*n.Expiration)
		ok := d < time.Duration(n.TTL+2)*time.Second && d > -3*time.Second
		b.WriteString(fmt.Sprintf(" exp=yes(sane=%v)", ok))
	}
	if n.Nodes != nil {
		b.WriteString(fmt.Sprintf(" nodes[%d]=", len(n.Nodes)))
		for _, c := range n.Nodes {
			b.WriteString(pnode(c, depth+1))
		}
	}
	b.WriteString("}")
	return b.String()
}

func sortTree(n *client.Node) {
	if n == nil {
		return
	}
	sort.Sort(n.Nodes)
	for _, c := range n.Nodes {
		sortTree(c)
	}
}

func perr(err error) string {
	if err == nil {
		return "nil"
	}
	var ce client.Error
	if errors.As(err, &ce) {
		cause := strings.ReplaceAll(ce.Cause, prefix, "P")
		if ce.Code == client.ErrorCodeTestFailed {
			// "[v1 != v2] [i1 != i2]": renumber the index bracket
			cause = regexp.MustCompile(`\[([0-9]+) != ([0-9]+)\]`).ReplaceAllStringFunc(cause, func(s string) string {
				m := regexp.MustCompile(`\[([0-9]+) != ([0-9]+)\]`).FindStringSubmatch(s)
				a, _ := strconv.ParseUint(m[1], 10, 64)
				bb, _ := strconv.ParseUint(m[2], 10, 64)
				return "[" + ni(a) + " != " + ni(bb) + "]"
			})
		}
		if ce.Code == client.ErrorCodeEventIndexCleared {
			m := regexp.MustCompile(`\[([0-9]+)/([0-9]+)\]`).FindStringSubmatch(cause)
			if m != nil {
				o, _ := strconv.ParseUint(m[1], 10, 64)
				r, _ := strconv.ParseUint(m[2], 10, 64)
				cause = strings.Replace(cause, m[0], fmt.Sprintf("[index-%d/%s]", ce.Index-o, ni(r)), 1)
			}
		}
		return fmt.Sprintf("client.Error{Code=%d Message=%q Cause=%q Index=%s} IsKeyNotFound=%v",
			ce.Code, ce.Message, cause, ni(ce.Index), client.IsKeyNotFound(err))
	}
	if err == context.DeadlineExceeded {
		return "context.DeadlineExceeded"
	}
	if err == context.Canceled {
		return "context.Canceled"
	}
	s := fmt.Sprintf("%T: %v", err, err)
	s = strings.ReplaceAll(s, ep, "EP")
	return s
}

func presp(r *client.Response) string {
	if r == nil {
		return "resp=nil"
	}
	s := fmt.Sprintf("action=%s index=%s node=%s", r.Action, ni(r.Index), pnode(r.Node, 0))
	if r.PrevNode != nil {
		s += " prev=" + pnode(r.PrevNode, 0)
	}
	// Hex without leading zeros, as etcd prints ids: 1 to 16 digits.
	_, hexErr := strconv.ParseUint(r.ClusterID, 16, 64)
	s += fmt.Sprintf(" clusterID=%v", r.ClusterID != "" && hexErr == nil)
	return s
}

func out(name string, r *client.Response, err error) *client.Response {
	step++
	if err != nil {
		fmt.Printf("%03d %s: ERR %s\n", step, name, perr(err))
	} else {
		fmt.Printf("%03d %s: %s\n", step, name, presp(r))
	}
	return r
}

func o(name string) func(*client.Response, error) *client.Response {
	return func(r *client.Response, err error) *client.Response { return out(name, r, err) }
}

func note(name, s string) {
	step++
	fmt.Printf("%03d %s: %s\n", step, name, strings.ReplaceAll(s, ep, "EP"))
}

// watchers is the store's count of waiting watches (/v2/stats/store), on both servers.
func watchers() int {
	resp, err := http.Get(ep + "/v2/stats/store")
	if err != nil {
		fmt.Fprintln(os.Stderr, "GET /v2/stats/store:", err)
		os.Exit(2)
	}
	defer resp.Body.Close()
	var stats struct {
		Watchers int `json:"watchers"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&stats); err != nil {
		fmt.Fprintln(os.Stderr, "/v2/stats/store:", err)
		os.Exit(2)
	}
	return stats.Watchers
}

// waitWatchers waits until at least n watches wait (or 5 s, then the step's output differs).
func waitWatchers(n int) {
	deadline := time.Now().Add(5 * time.Second)
	for watchers() < n && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
}

func ctxT(d time.Duration) context.Context {
	c, _ := context.WithTimeout(context.Background(), d)
	return c
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: go_etcd_session ENDPOINT")
		os.Exit(2)
	}
	ep = strings.TrimRight(os.Args[1], "/")
	prefix = fmt.Sprintf("/gosess%d", time.Now().UnixNano())

	c, err := client.New(client.Config{Endpoints: []string{ep}, Transport: client.DefaultTransport, HeaderTimeoutPerRequest: 5 * time.Second})
	if err != nil {
		panic(err)
	}
	k := client.NewKeysAPI(c)
	bg := context.Background()
	P := func(s string) string { return prefix + s }

	// ---------------- 1. KeysAPI ----------------
	// a first write, so that no index below is 0 (a fresh rota has index 0, a fresh etcd 3)
	if _, err := k.Set(bg, P("/init"), "i", nil); err != nil {
		fmt.Println("000 init:", perr(err))
	}
	o("Get missing")(k.Get(bg, P("/missing/deeper"), nil))
	o("Set a=1")(k.Set(bg, P("/a"), "1", nil))
	o("Set a=2")(k.Set(bg, P("/a"), "2", nil))
	o("Get a")(k.Get(bg, P("/a"), nil))
	o("Get a quorum")(k.Get(bg, P("/a"), &client.GetOptions{Quorum: true}))
	o("Create a (exists)")(k.Create(bg, P("/a"), "x"))
	o("Create b")(k.Create(bg, P("/b"), "b1"))
	o("Update c (missing)")(k.Update(bg, P("/c"), "c"))
	o("Update b")(k.Update(bg, P("/b"), "b2"))
	o("CAS a prevValue=2")(k.Set(bg, P("/a"), "3", &client.SetOptions{PrevValue: "2"}))
	o("CAS a prevValue=nope")(k.Set(bg, P("/a"), "4", &client.SetOptions{PrevValue: "nope"}))
	ga, _ := k.Get(bg, P("/a"), nil)
	o("CAS a prevIndex=mod")(k.Set(bg, P("/a"), "4", &client.SetOptions{PrevIndex: ga.Node.ModifiedIndex}))
	o("CAS a prevIndex=bad")(k.Set(bg, P("/a"), "5", &client.SetOptions{PrevIndex: sentinel}))
	o("CAS a both bad")(k.Set(bg, P("/a"), "5", &client.SetOptions{PrevValue: "nope", PrevIndex: sentinel}))
	o("CAS a value ok index bad")(k.Set(bg, P("/a"), "5", &client.SetOptions{PrevValue: "4", PrevIndex: sentinel}))
	o("CAS a value bad index ok")(k.Set(bg, P("/a"), "5", &client.SetOptions{PrevValue: "x", PrevIndex: 0}))
	o("Set a prevExist=true")(k.Set(bg, P("/a"), "5", &client.SetOptions{PrevExist: client.PrevExist}))
	o("Set new prevExist=true")(k.Set(bg, P("/new"), "n", &client.SetOptions{PrevExist: client.PrevExist}))
	o("Set a prevExist=false")(k.Set(bg, P("/a"), "6", &client.SetOptions{PrevExist: client.PrevNoExist}))
	o("Set a prevExist=true prevValue=5")(k.Set(bg, P("/a"), "6", &client.SetOptions{PrevExist: client.PrevExist, PrevValue: "5"}))
	o("Set d dir")(k.Set(bg, P("/d"), "", &client.SetOptions{Dir: true}))
	o("Set d dir again")(k.Set(bg, P("/d"), "", &client.SetOptions{Dir: true}))
	o("Set d value (on dir)")(k.Set(bg, P("/d"), "v", nil))
	o("Set d dir prevExist=true")(k.Set(bg, P("/d"), "", &client.SetOptions{Dir: true, PrevExist: client.PrevExist}))
	o("Set d dir ttl=5 prevExist=true")(k.Set(bg, P("/d"), "", &client.SetOptions{Dir: true, TTL: 5 * time.Second, PrevExist: client.PrevExist}))
	o("Get d")(k.Get(bg, P("/d"), nil))
	o("Set d dir no ttl prevExist=true")(k.Set(bg, P("/d"), "", &client.SetOptions{Dir: true, PrevExist: client.PrevExist}))
	o("Set d dir prevExist=false")(k.Set(bg, P("/d"), "", &client.SetOptions{Dir: true, PrevExist: client.PrevNoExist}))
	o("Set d prevValue (dir)")(k.Set(bg, P("/d"), "v", &client.SetOptions{PrevValue: "x"}))
	o("Set under file")(k.Set(bg, P("/a/x"), "1", nil))
	o("Get under file")(k.Get(bg, P("/a/x"), nil))
	o("Delete under file")(k.Delete(bg, P("/a/x"), nil))
	o("Set t ttl=5")(k.Set(bg, P("/t"), "t", &client.SetOptions{TTL: 5 * time.Second}))
	o("Get t")(k.Get(bg, P("/t"), nil))
	o("Refresh t ttl=10")(k.Set(bg, P("/t"), "", &client.SetOptions{TTL: 10 * time.Second, Refresh: true}))
	o("Refresh t no ttl")(k.Set(bg, P("/t"), "", &client.SetOptions{Refresh: true}))
	o("Refresh t with value")(k.Set(bg, P("/t"), "zz", &client.SetOptions{TTL: 10 * time.Second, Refresh: true}))
	o("Refresh t prevExist=true")(k.Set(bg, P("/t"), "", &client.SetOptions{TTL: 10 * time.Second, Refresh: true, PrevExist: client.PrevExist}))
	o("Refresh t prevValue=t")(k.Set(bg, P("/t"), "", &client.SetOptions{TTL: 10 * time.Second, Refresh: true, PrevValue: "t"}))
	o("Refresh t prevValue=bad")(k.Set(bg, P("/t"), "", &client.SetOptions{TTL: 10 * time.Second, Refresh: true, PrevValue: "bad"}))
	o("Refresh missing")(k.Set(bg, P("/tmissing"), "", &client.SetOptions{TTL: 10 * time.Second, Refresh: true}))
	o("Refresh dir d")(k.Set(bg, P("/d"), "", &client.SetOptions{TTL: 10 * time.Second, Refresh: true}))
	o("Set t permanent")(k.Set(bg, P("/t"), "t2", nil))
	o("Set nv noValueOnSuccess")(k.Set(bg, P("/nv"), "v", &client.SetOptions{NoValueOnSuccess: true}))
	o("CAS nv noValueOnSuccess")(k.Set(bg, P("/nv"), "w", &client.SetOptions{NoValueOnSuccess: true, PrevValue: "v"}))
	o("Create nv2 noValueOnSuccess")(k.Set(bg, P("/nv2"), "w", &client.SetOptions{NoValueOnSuccess: true, PrevExist: client.PrevNoExist}))
	o("Update nv noValueOnSuccess")(k.Set(bg, P("/nv"), "u", &client.SetOptions{NoValueOnSuccess: true, PrevExist: client.PrevExist}))
	o("CAS nv noValueOnSuccess bad")(k.Set(bg, P("/nv"), "w", &client.SetOptions{NoValueOnSuccess: true, PrevValue: "nope"}))
	o("Set dir nvd noValueOnSuccess")(k.Set(bg, P("/nvd"), "", &client.SetOptions{NoValueOnSuccess: true, Dir: true}))
	// ttl of 500ms is sent as ttl=0 by the client: expires at once
	r0, e0 := k.Set(bg, P("/z0/k"), "v", &client.SetOptions{TTL: 500 * time.Millisecond})
	out("Set z0/k ttl=500ms (ttl=0)", r0, e0)
	if e0 == nil {
		w := k.Watcher(P("/z0/k"), &client.WatcherOptions{AfterIndex: r0.Node.ModifiedIndex})
		r, e := w.Next(ctxT(5 * time.Second))
		if r != nil {
			// X-Etcd-Index is the index when the watch began: before the expiry or after
			// it (etcd expires at its next sweep, up to 500 ms later; rota at once).
			r.Index = 0
		}
		out("Watch z0/k expire", r, e)
	}
	o("Get z0/k after expire")(k.Get(bg, P("/z0/k"), nil))
	o("Get z0 (dir stays)")(k.Get(bg, P("/z0"), nil))
	o("Set hidden _h")(k.Set(bg, P("/_h"), "h", nil))
	o("Set e/_h2 hidden")(k.Set(bg, P("/e/_h2"), "h", nil))
	o("Get _h")(k.Get(bg, P("/_h"), nil))
	for _, key := range []string{"/sp ace", "/q?x=1&y", "/h#frag", "/pct%41", "/ü/ñ", "/plus+sign", "/semi;colon", "/tilde~", "/dot.", "/back\\slash"} {
		o("Set "+key)(k.Set(bg, P(key), "v:"+key, nil))
		o("Get "+key)(k.Get(bg, P(key), nil))
	}
	o("Set trailing slash ts/")(k.Set(bg, P("/ts/"), "ts", nil))
	o("Get ts")(k.Get(bg, P("/ts"), nil))
	o("Get ts/")(k.Get(bg, P("/ts/"), nil))
	o("Set dotdot")(k.Set(bg, P("/dd/../ddd"), "x", nil))
	o("Set double slash")(k.Set(bg, P("//dbl//x"), "x", nil))
	o("Get dbl")(k.Get(bg, P("/dbl"), &client.GetOptions{Recursive: true}))
	for i, v := range []string{"", "a&b=c\n", "ünï\u2603", "<html>&amp;", strings.Repeat("x", 3000), "a%20b+c", "\x01\x7f"} {
		r, e := k.Set(bg, P("/val"+strconv.Itoa(i)), v, nil)
		if e == nil {
			r, e = k.Get(bg, P("/val"+strconv.Itoa(i)), nil)
			if e == nil && r.Node != nil {
				note("value roundtrip "+strconv.Itoa(i), fmt.Sprintf("equal=%v len=%d", r.Node.Value == v, len(r.Node.Value)))
				continue
			}
		}
		out("value roundtrip "+strconv.Itoa(i), r, e)
	}
	o("CAS val1 special prevValue")(k.Set(bg, P("/val1"), "new", &client.SetOptions{PrevValue: "a&b=c\n"}))
	o("CAD val2 special prevValue")(k.Delete(bg, P("/val2"), &client.DeleteOptions{PrevValue: "ünï\u2603"}))

	// listings
	r, e := k.Get(bg, P(""), &client.GetOptions{Sort: true})
	out("Get P sorted", r, e)
	r, e = k.Get(bg, P(""), &client.GetOptions{Recursive: true, Sort: true})
	out("Get P recursive sorted", r, e)
	r, e = k.Get(bg, P(""), &client.GetOptions{Recursive: true})
	if r != nil {
		sortTree(r.Node)
	}
	out("Get P recursive unsorted (client-sorted)", r, e)
	o("Get P/d recursive (empty dir)")(k.Get(bg, P("/d"), &client.GetOptions{Recursive: true}))

	// in-order keys
	o("CreateInOrder q j1")(k.CreateInOrder(bg, P("/q"), "j1", nil))
	q2 := o("CreateInOrder q j2")(k.CreateInOrder(bg, P("/q"), "j2", nil))
	o("CreateInOrder q j3 ttl=60")(k.CreateInOrder(bg, P("/q"), "j3", &client.CreateInOrderOptions{TTL: 60 * time.Second}))
	o("Get q sorted")(k.Get(bg, P("/q"), &client.GetOptions{Sort: true}))
	o("CreateInOrder on file a")(k.CreateInOrder(bg, P("/a"), "x", nil))
	if q2 != nil {
		o("Delete q/j2")(k.Delete(bg, q2.Node.Key, nil))
	}
	o("Get q sorted after delete")(k.Get(bg, P("/q"), &client.GetOptions{Sort: true}))

	// deletes
	o("Delete d (dir, no flags)")(k.Delete(bg, P("/d"), nil))
	o("Set d/e")(k.Set(bg, P("/d/e"), "1", nil))
	o("Delete d dir=true (not empty)")(k.Delete(bg, P("/d"), &client.DeleteOptions{Dir: true}))
	o("Delete d prevValue (dir)")(k.Delete(bg, P("/d"), &client.DeleteOptions{PrevValue: "x", Recursive: true}))
	o("Delete d recursive")(k.Delete(bg, P("/d"), &client.DeleteOptions{Recursive: true}))
	o("Delete a prevValue=nope")(k.Delete(bg, P("/a"), &client.DeleteOptions{PrevValue: "nope"}))
	o("Delete a prevValue=6")(k.Delete(bg, P("/a"), &client.DeleteOptions{PrevValue: "6"}))
	o("Delete b prevIndex=bad")(k.Delete(bg, P("/b"), &client.DeleteOptions{PrevIndex: sentinel}))
	gb, _ := k.Get(bg, P("/b"), nil)
	if gb != nil {
		o("Delete b prevIndex=mod")(k.Delete(bg, P("/b"), &client.DeleteOptions{PrevIndex: gb.Node.ModifiedIndex}))
	}
	o("Delete missing")(k.Delete(bg, P("/missing"), nil))
	o("Delete missing recursive")(k.Delete(bg, P("/missing/x"), &client.DeleteOptions{Recursive: true}))
	o("Set e2 dir")(k.Set(bg, P("/e2"), "", &client.SetOptions{Dir: true}))
	o("Delete e2 dir=true")(k.Delete(bg, P("/e2"), &client.DeleteOptions{Dir: true}))
	o("Set f")(k.Set(bg, P("/f"), "f", nil))
	o("Delete f dir=true (file)")(k.Delete(bg, P("/f"), &client.DeleteOptions{Dir: true}))
	o("Set f2")(k.Set(bg, P("/f2"), "f", nil))
	o("Delete f2 dir=true prevValue")(k.Delete(bg, P("/f2"), &client.DeleteOptions{Dir: true, PrevValue: "f"}))
	o("Delete root")(k.Delete(bg, "/", nil))
	o("Delete root recursive")(k.Delete(bg, "/", &client.DeleteOptions{Recursive: true}))
	o("Set root")(k.Set(bg, "/", "x", nil))
	if r, e := k.Get(bg, "/", nil); r != nil && r.Node != nil {
		// root listing contents vary: keep only its shape
		note("Get root shape", fmt.Sprintf("key=%q dir=%v c=%d m=%d", r.Node.Key, r.Node.Dir, r.Node.CreatedIndex, r.Node.ModifiedIndex))
	} else {
		out("Get root", r, e)
	}

	// ---------------- 2. Watcher ----------------
	w1, _ := k.Set(bg, P("/w"), "1", nil)
	k.Set(bg, P("/w"), "2", nil)
	k.Set(bg, P("/w"), "3", &client.SetOptions{PrevValue: "2"})
	k.Set(bg, P("/w"), "4", &client.SetOptions{PrevExist: client.PrevExist})
	k.Delete(bg, P("/w"), nil)
	k.Create(bg, P("/w"), "5")
	k.Delete(bg, P("/w"), &client.DeleteOptions{PrevValue: "5"})
	k.Set(bg, P("/w-other"), "o", nil)
	if w1 != nil {
		w := k.Watcher(P("/w"), &client.WatcherOptions{AfterIndex: w1.Node.ModifiedIndex})
		for i := 0; i < 6; i++ {
			r, e := w.Next(ctxT(3 * time.Second))
			out("Watch w history #"+strconv.Itoa(i), r, e)
		}
		w0 := k.Watcher(P("/w"), &client.WatcherOptions{AfterIndex: w1.Node.ModifiedIndex - 1})
		r, e := w0.Next(ctxT(3 * time.Second))
		out("Watch w AfterIndex=set-1", r, e)
	}
	// recursive dir watch
	g0, _ := k.Get(bg, P(""), nil)
	k.Set(bg, P("/wd/a"), "a", nil)
	k.Set(bg, P("/wd/b/c"), "c", nil)
	k.Set(bg, P("/wd/_h"), "hidden", nil)
	k.Set(bg, P("/wd/b/_h/x"), "hidden2", nil)
	k.Set(bg, P("/wd"), "", &client.SetOptions{Dir: true, TTL: 30 * time.Second, PrevExist: client.PrevExist})
	k.Delete(bg, P("/wd/a"), nil)
	k.Delete(bg, P("/wd"), &client.DeleteOptions{Recursive: true})
	if g0 != nil {
		w := k.Watcher(P("/wd"), &client.WatcherOptions{AfterIndex: g0.Index, Recursive: true})
		for i := 0; i < 5; i++ {
			r, e := w.Next(ctxT(3 * time.Second))
			out("Watch wd recursive #"+strconv.Itoa(i), r, e)
		}
		w2 := k.Watcher(P("/wd"), &client.WatcherOptions{AfterIndex: g0.Index})
		r, e := w2.Next(ctxT(3 * time.Second))
		out("Watch wd non-recursive first", r, e)
		w3 := k.Watcher(P("/wd/b/c"), &client.WatcherOptions{AfterIndex: g0.Index})
		for i := 0; i < 2; i++ {
			r, e := w3.Next(ctxT(3 * time.Second))
			out("Watch wd/b/c #"+strconv.Itoa(i), r, e)
		}
		w4 := k.Watcher(P("/wd/_h"), &client.WatcherOptions{AfterIndex: g0.Index})
		r, e = w4.Next(ctxT(3 * time.Second))
		out("Watch wd/_h exact", r, e)
		w5 := k.Watcher(P(""), &client.WatcherOptions{AfterIndex: g0.Index, Recursive: true})
		r, e = w5.Next(ctxT(3 * time.Second))
		out("Watch P recursive first", r, e)
	}
	// live watch: start the watcher, then write (result independent of ordering)
	{
		g, _ := k.Get(bg, P(""), nil)
		w := k.Watcher(P("/live"), &client.WatcherOptions{AfterIndex: g.Index})
		type res struct {
			r *client.Response
			e error
		}
		ch := make(chan res, 1)
		go func() { r, e := w.Next(ctxT(5 * time.Second)); ch <- res{r, e} }()
		s, _ := k.Set(bg, P("/live"), "L", nil)
		x := <-ch
		if x.r != nil {
			idx := x.r.Index
			x.r.Index = 0 // X-Etcd-Index of a live watch is its start index or, if the set came first, the set's index
			out("Watch live (node)", x.r, x.e)
			x.r.Index = idx
		} else {
			out("Watch live (node)", x.r, x.e)
		}
		if x.r != nil && s != nil {
			note("Watch live X-Etcd-Index", fmt.Sprintf("in{start,set}=%v", x.r.Index == g.Index || x.r.Index == s.Index))
		}
		// live watch with no AfterIndex
		watchersBefore := watchers()
		w0 := k.Watcher(P("/live"), nil)
		ch2 := make(chan res, 1)
		go func() { r, e := w0.Next(ctxT(5 * time.Second)); ch2 <- res{r, e} }()
		waitWatchers(watchersBefore + 1) // the watch must be registered before the write (no AfterIndex)
		k.Set(bg, P("/live"), "L2", nil)
		x = <-ch2
		out("Watch live no AfterIndex", x.r, x.e)
		r, e := w0.Next(ctxT(700 * time.Millisecond))
		out("Watch live no AfterIndex, second Next (nothing)", r, e)
	}
	// TTL expiry while watching, dir expiry
	{
		s, e := k.Set(bg, P("/exp"), "e", &client.SetOptions{TTL: 1 * time.Second})
		out("Set exp ttl=1", s, e)
		if s != nil {
			w := k.Watcher(P("/exp"), &client.WatcherOptions{AfterIndex: s.Node.ModifiedIndex})
			r, e := w.Next(ctxT(5 * time.Second))
			out("Watch exp (expire)", r, e)
			if r != nil {
				note("expire index = set+1", fmt.Sprintf("%v", r.Node.ModifiedIndex == s.Node.ModifiedIndex+1))
			}
		}
		o("Get exp after expire")(k.Get(bg, P("/exp"), nil))
		d, e := k.Set(bg, P("/ed"), "", &client.SetOptions{Dir: true, TTL: 1 * time.Second})
		out("Set ed dir ttl=1", d, e)
		c, e := k.Set(bg, P("/ed/child"), "c", nil)
		out("Set ed/child", c, e)
		if c != nil {
			w := k.Watcher(P("/ed/child"), &client.WatcherOptions{AfterIndex: c.Node.ModifiedIndex})
			r, e := w.Next(ctxT(5 * time.Second))
			out("Watch ed/child (dir expire)", r, e)
		}
		o("Get ed after expire")(k.Get(bg, P("/ed/child"), nil))
	}
	// refresh makes no event
	{
		s, _ := k.Set(bg, P("/r"), "r", &client.SetOptions{TTL: 30 * time.Second})
		rf, e := k.Set(bg, P("/r"), "", &client.SetOptions{TTL: 30 * time.Second, Refresh: true})
		out("Refresh r", rf, e)
		k.Set(bg, P("/r"), "r2", nil)
		if s != nil {
			w := k.Watcher(P("/r"), &client.WatcherOptions{AfterIndex: s.Node.ModifiedIndex})
			r, e := w.Next(ctxT(3 * time.Second))
			out("Watch r after refresh", r, e)
			if r != nil && rf != nil {
				note("refresh took one index", fmt.Sprintf("%v", rf.Node.ModifiedIndex == s.Node.ModifiedIndex+1 && r.Node.ModifiedIndex == rf.Node.ModifiedIndex+1))
			}
		}
	}
	// cancellation
	{
		w := k.Watcher(P("/never"), nil)
		r, e := w.Next(ctxT(400 * time.Millisecond))
		out("Watch never (deadline)", r, e)
		cctx, cancel := context.WithCancel(bg)
		go func() { time.Sleep(200 * time.Millisecond); cancel() }()
		r, e = w.Next(cctx)
		out("Watch never (cancel)", r, e)
		// the connection must be usable right after
		o("Get after cancel")(k.Get(bg, P("/t"), nil))
	}

	// ---------------- 3. metadata / index arithmetic ----------------
	{
		s1, _ := k.Set(bg, P("/m"), "1", nil)
		g1, _ := k.Get(bg, P("/m"), nil)
		s2, _ := k.Set(bg, P("/m"), "2", nil)
		u, _ := k.Update(bg, P("/m"), "3")
		c, _ := k.Set(bg, P("/m"), "4", &client.SetOptions{PrevValue: "3"})
		_, fe := k.Set(bg, P("/m"), "5", &client.SetOptions{PrevValue: "x"})
		g2, _ := k.Get(bg, P("/m"), nil)
		dl, _ := k.Delete(bg, P("/m"), nil)
		_, ge := k.Get(bg, P("/m"), nil)
		if s1 != nil && g1 != nil && s2 != nil && u != nil && c != nil && g2 != nil && dl != nil {
			b := s1.Index
			note("index arithmetic", fmt.Sprintf("set.Index=mod:%v get.Index=+%d set2=+%d(created=+%d) update=+%d(created=+%d) cas=+%d get2=+%d delete=+%d(created=+%d)",
				s1.Index == s1.Node.ModifiedIndex, g1.Index-b, s2.Index-b, s2.Node.CreatedIndex-b, u.Index-b, u.Node.CreatedIndex-b, c.Index-b, g2.Index-b, dl.Index-b, dl.Node.CreatedIndex-b))
			if ce, ok := fe.(client.Error); ok {
				note("failed CAS error index", fmt.Sprintf("+%d", int64(ce.Index)-int64(b)))
			}
			if ce, ok := ge.(client.Error); ok {
				note("get missing error index", fmt.Sprintf("+%d", int64(ce.Index)-int64(b)))
			}
		}
	}

	// ---------------- 4. Members / cluster client ----------------
	m := client.NewMembersAPI(c)
	ms, err := m.List(bg)
	var myID string
	if err != nil {
		note("Members List", "ERR "+perr(err))
	} else {
		var sb []string
		for _, x := range ms {
			myID = x.ID
			_, idErr := strconv.ParseUint(x.ID, 16, 64) // hex without leading zeros: 1 to 16 digits
			sb = append(sb, fmt.Sprintf("{name=%s id=%v client=%v peers=%d}", x.Name, x.ID != "" && idErr == nil, x.ClientURLs, len(x.PeerURLs)))
		}
		note("Members List", strings.Join(sb, " "))
	}
	ld, err := m.Leader(bg)
	if err != nil {
		note("Members Leader", "ERR "+perr(err))
	} else {
		note("Members Leader", fmt.Sprintf("{name=%s sameAsList=%v client=%v peers=%d}", ld.Name, ld.ID == myID, ld.ClientURLs, len(ld.PeerURLs)))
	}
	if err := m.Remove(bg, "1234567890abcdef"); true {
		note("Members Remove unknown", perr(err))
	}
	if len(ms) > 0 && len(ms[0].PeerURLs) > 0 {
		_, err := m.Add(bg, ms[0].PeerURLs[0])
		note("Members Add existing peer URL", perr(err))
		err = m.Update(bg, "1234567890abcdef", []string{"http://127.0.0.1:21698"})
		note("Members Update unknown", perr(err))
		err = m.Update(bg, myID, ms[0].PeerURLs)
		note("Members Update self same URLs", perr(err))
	}
	_, err = m.Add(bg, "not a url")
	note("Members Add bad URL", perr(err))
	v, err := c.GetVersion(bg)
	if err != nil {
		note("GetVersion", "ERR "+perr(err))
	} else {
		note("GetVersion", fmt.Sprintf("server=%s cluster=%s", v.Server, v.Cluster))
	}
	note("Endpoints before Sync", fmt.Sprint(c.Endpoints()))
	note("Sync", perr(c.Sync(bg)))
	note("Endpoints after Sync", fmt.Sprint(c.Endpoints()))
	note("AutoSync 300ms", perr(c.AutoSync(ctxT(300*time.Millisecond), 100*time.Millisecond)))
	// one dead endpoint
	dead := "http://127.0.0.1:21699"
	c2, _ := client.New(client.Config{Endpoints: []string{dead, ep}, Transport: client.DefaultTransport})
	k2 := client.NewKeysAPI(c2)
	okc := 0
	for i := 0; i < 4; i++ {
		if _, e := k2.Get(bg, P("/t"), nil); e == nil {
			okc++
		} else {
			note("dead endpoint get error", perr(e))
		}
	}
	note("dead endpoint: gets ok", strconv.Itoa(okc))
	_, e2 := k2.Delete(bg, P("/nonexistent-del"), nil) // one-shot action: may hit the dead endpoint
	if e2 != nil {
		var ce client.Error
		if errors.As(e2, &ce) {
			note("dead endpoint delete", "client.Error code "+strconv.Itoa(ce.Code))
		} else {
			note("dead endpoint delete", "transport error (dead endpoint pinned first)")
		}
	}
	note("dead endpoint Sync", perr(c2.Sync(bg)))
	note("dead endpoint Endpoints after Sync", fmt.Sprint(c2.Endpoints()))
	// hanging endpoint + header timeout
	ln, lerr := net.Listen("tcp", "127.0.0.1:0")
	if lerr == nil {
		var conns []net.Conn
		var mu sync.Mutex
		go func() {
			for {
				cn, err := ln.Accept()
				if err != nil {
					return
				}
				mu.Lock()
				conns = append(conns, cn)
				mu.Unlock()
			}
		}()
		hang := "http://" + ln.Addr().String()
		c3, _ := client.New(client.Config{Endpoints: []string{hang}, HeaderTimeoutPerRequest: 300 * time.Millisecond})
		_, e := client.NewKeysAPI(c3).Get(bg, P("/t"), nil)
		note("hanging endpoint only", strings.ReplaceAll(perr(e), hang, "HANG"))
		c4, _ := client.New(client.Config{Endpoints: []string{hang, ep}, HeaderTimeoutPerRequest: 300 * time.Millisecond})
		r, e := client.NewKeysAPI(c4).Get(bg, P("/t"), nil)
		out("hanging + good endpoint Get", r, e)
		// a watch is not bound by the header timeout
		c5, _ := client.New(client.Config{Endpoints: []string{ep}, HeaderTimeoutPerRequest: 200 * time.Millisecond})
		w := client.NewKeysAPI(c5).Watcher(P("/never2"), nil)
		r, e = w.Next(ctxT(700 * time.Millisecond))
		out("watch with header timeout 200ms, ctx 700ms", r, e)
		ln.Close()
		mu.Lock()
		for _, cn := range conns {
			cn.Close()
		}
		mu.Unlock()
	}
	c6, _ := client.New(client.Config{Endpoints: []string{dead, ep}, SelectionMode: client.EndpointSelectionPrioritizeLeader})
	note("PrioritizeLeader Sync", perr(c6.Sync(bg)))
	note("PrioritizeLeader Endpoints", fmt.Sprint(c6.Endpoints()))
	o("PrioritizeLeader Get")(client.NewKeysAPI(c6).Get(bg, P("/t"), nil))

	// ---------------- history window (401) ----------------
	{
		g, _ := k.Get(bg, P(""), nil)
		first := g.Index
		var wg sync.WaitGroup
		var fails int64
		var fmu sync.Mutex
		for wkr := 0; wkr < 4; wkr++ {
			wg.Add(1)
			go func(wkr int) {
				defer wg.Done()
				for i := 0; i < 260; i++ {
					if _, e := k.Set(bg, P(fmt.Sprintf("/burst/k%d", wkr)), strconv.Itoa(i), nil); e != nil {
						fmu.Lock()
						fails++
						fmu.Unlock()
					}
				}
			}(wkr)
		}
		wg.Wait()
		note("burst 1040 sets, failures", strconv.FormatInt(fails, 10))
		g2, _ := k.Get(bg, P(""), nil)
		C := g2.Index
		note("burst index delta", strconv.FormatUint(C-first, 10))
		w := k.Watcher(P("/w"), &client.WatcherOptions{AfterIndex: first})
		r, e := w.Next(ctxT(3 * time.Second))
		out("Watch w from before burst (401)", r, e)
		w = k.Watcher(P(""), &client.WatcherOptions{AfterIndex: C - 1000, Recursive: true})
		r, e = w.Next(ctxT(3 * time.Second))
		if r != nil {
			note("Watch AfterIndex=C-1000 (waitIndex C-999)", fmt.Sprintf("ok action=%s mod=C-%d", r.Action, C-r.Node.ModifiedIndex))
		} else {
			out("Watch AfterIndex=C-1000 (waitIndex C-999)", r, e)
		}
		w = k.Watcher(P(""), &client.WatcherOptions{AfterIndex: C - 1001, Recursive: true})
		r, e = w.Next(ctxT(3 * time.Second))
		out("Watch AfterIndex=C-1001 (waitIndex C-1000)", r, e)
		// AfterIndex in the future
		w = k.Watcher(P("/burst/k0"), &client.WatcherOptions{AfterIndex: C + 1})
		type res struct {
			r *client.Response
			e error
		}
		ch := make(chan res, 1)
		go func() { r, e := w.Next(ctxT(5 * time.Second)); ch <- res{r, e} }()
		k.Set(bg, P("/burst/k0"), "f1", nil) // index C+1: not returned (waitIndex C+2)
		k.Set(bg, P("/burst/k0"), "f2", nil) // index C+2
		x := <-ch
		if x.r != nil {
			note("Watch future AfterIndex=C+1", fmt.Sprintf("value=%s mod=C+%d", x.r.Node.Value, x.r.Node.ModifiedIndex-C))
		} else {
			out("Watch future AfterIndex=C+1", x.r, x.e)
		}
	}

	// cleanup
	r, e = k.Delete(bg, P(""), &client.DeleteOptions{Recursive: true})
	out("Delete P recursive", r, e)
	o("Delete P/_h (gone with P)")(k.Delete(bg, P("/_h"), nil))
	note("done", "")
}
