package main

import (
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"sync"
	"time"
)

// progress draws one status line per running task, redrawn in place on a terminal and printed at most every
// two seconds otherwise, as image tools do.
type progress struct {
	w     io.Writer
	tty   bool
	mu    sync.Mutex
	tasks map[string]*task
	last  time.Time
	lines int
}

type task struct {
	total, done int64
	start       time.Time
}

func newProgress(w io.Writer) *progress {
	tty := false
	if f, ok := w.(*os.File); ok {
		if fi, err := f.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
			tty = true
		}
	}
	return &progress{w: w, tty: tty, tasks: map[string]*task{}}
}

func (p *progress) Start(name string, total int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.tasks[name] = &task{total: total, start: time.Now()}
	p.drawLocked(false)
}

func (p *progress) Add(name string, n int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if t := p.tasks[name]; t != nil {
		t.done += n
	}
	p.drawLocked(false)
}

func (p *progress) Done(name string, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	t := p.tasks[name]
	delete(p.tasks, name)
	p.clearLocked()
	if t != nil {
		status := "done"
		if err != nil {
			status = "failed"
		}
		fmt.Fprintf(p.w, "%-28s %s %s in %s\n", name, status, human(t.done), time.Since(t.start).Round(time.Millisecond))
	}
	p.drawLocked(true)
}

func (p *progress) finish() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.clearLocked()
}

func (p *progress) clearLocked() {
	if p.tty && p.lines > 0 {
		fmt.Fprintf(p.w, "\x1b[%dA\x1b[J", p.lines)
		p.lines = 0
	}
}

func (p *progress) drawLocked(force bool) {
	every := 2 * time.Second
	if p.tty {
		every = 100 * time.Millisecond
	}
	if !force && time.Since(p.last) < every {
		return
	}
	p.last = time.Now()
	p.clearLocked()
	names := make([]string, 0, len(p.tasks))
	for n := range p.tasks {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		t := p.tasks[n]
		bar := ""
		if t.total > 0 {
			filled := int(20 * t.done / t.total)
			bar = "[" + strings.Repeat("=", filled) + strings.Repeat(" ", 20-filled) + "] "
		}
		fmt.Fprintf(p.w, "%-28s %s%s / %s\n", n, bar, human(t.done), human(t.total))
	}
	if p.tty {
		p.lines = len(names)
	}
}
