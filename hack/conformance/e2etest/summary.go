package main

import (
	"encoding/xml"
	"fmt"
	"io"
	"sort"
	"strings"
)

// maxReport bounds the JUnit report summarize reads (a full e2e run's report is a few MiB).
const maxReport = 256 << 20

// junitCase is the part of a Ginkgo JUnit <testcase> the summary needs. Ginkgo writes status="passed", "failed",
// "skipped", "pending", "panicked", "interrupted", "aborted" or "timedout".
type junitCase struct {
	Name    string `xml:"name,attr"`
	Status  string `xml:"status,attr"`
	Skipped *struct {
		Message string `xml:"message,attr"`
	} `xml:"skipped"`
}

type junitReport struct {
	Suites []struct {
		Cases []junitCase `xml:"testcase"`
	} `xml:"testsuite"`
}

// summary counts the specs of a run. NotSelected are those the focus and skip filters left out, which Ginkgo
// reports as skipped with the bare message "skipped"; Skipped are selected specs that skipped themselves at run
// time (e2eskipper: "skipped - <reason>").
type summary struct {
	Passed, Skipped, NotSelected int
	Failed                       []string // names of failed, panicked, timed-out, interrupted or aborted specs
	Pending                      int
}

// summarize reads a Ginkgo JUnit report.
func summarize(r io.Reader) (summary, error) {
	var rep junitReport
	data, err := io.ReadAll(io.LimitReader(r, maxReport+1))
	if err != nil {
		return summary{}, fmt.Errorf("reading report, %w", err)
	}
	if len(data) > maxReport {
		return summary{}, fmt.Errorf("report larger than %d bytes", maxReport)
	}
	if err := xml.Unmarshal(data, &rep); err != nil {
		return summary{}, fmt.Errorf("decoding report, %w", err)
	}
	var s summary
	for _, suite := range rep.Suites {
		for _, c := range suite.Cases {
			if !strings.HasPrefix(c.Name, "[It] ") {
				// The suite's own nodes ([SynchronizedBeforeSuite], [ReportAfterSuite], ...), one per
				// process under the ginkgo CLI: not specs.
				continue
			}
			switch c.Status {
			case "passed":
				s.Passed++
			case "skipped":
				if c.Skipped != nil && strings.HasPrefix(c.Skipped.Message, "skipped - ") {
					s.Skipped++
				} else {
					s.NotSelected++
				}
			case "pending":
				s.Pending++
			default:
				s.Failed = append(s.Failed, c.Name)
			}
		}
	}
	sort.Strings(s.Failed)
	return s, nil
}

// write prints the counts, the pass rate over the specs that ran or skipped themselves, and the failed specs.
func (s summary) write(w io.Writer) {
	selected := s.Passed + len(s.Failed) + s.Skipped
	fmt.Fprintf(w, "selected %d: passed %d, failed %d, skipped at run time %d (not selected %d, pending %d)\n",
		selected, s.Passed, len(s.Failed), s.Skipped, s.NotSelected, s.Pending)
	if selected > 0 {
		fmt.Fprintf(w, "pass rate %.1f%% of selected (%.1f%% of those that ran)\n",
			100*float64(s.Passed)/float64(selected), 100*float64(s.Passed)/float64(max(1, s.Passed+len(s.Failed))))
	}
	for _, f := range s.Failed {
		fmt.Fprintf(w, "FAILED %s\n", f)
	}
}
