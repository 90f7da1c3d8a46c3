package main

import (
	"bytes"
	"strings"
	"testing"
)

// report is shaped as the e2e framework's junit_01.xml (Ginkgo's JUnit reporter, messages omitted): specs are
// named "[It] ...", and the suite's own nodes (one per process under the ginkgo CLI) are not specs.
const report = `<?xml version="1.0" encoding="UTF-8"?>
<testsuites tests="6" disabled="3" errors="0" failures="2" time="12.5">
  <testsuite name="Kubernetes e2e suite" package="/" tests="6" disabled="3" skipped="0" errors="0" failures="2" time="12.5">
    <testcase name="[SynchronizedBeforeSuite]" classname="Kubernetes e2e suite" status="passed" time="0.2"></testcase>
    <testcase name="[ReportAfterSuite] Kubernetes e2e suite report" classname="Kubernetes e2e suite" status="passed" time="0"></testcase>
    <testcase name="[It] [sig-node] Pods should be submitted and removed [NodeConformance] [Conformance]" classname="Kubernetes e2e suite" status="passed" time="3.1"></testcase>
    <testcase name="[It] [sig-node] Sysctls should support sysctls [MinimumKubeletVersion:1.21] [Environment:NotInUserNS] [Conformance]" classname="Kubernetes e2e suite" status="failed" time="5.0"><failure type="failed">[FAILED] timed out</failure><system-err>log</system-err></testcase>
    <testcase name="[It] [sig-node] Probing container should be restarted [NodeConformance]" classname="Kubernetes e2e suite" status="timedout" time="4.4"><failure type="timedout">timeout</failure></testcase>
    <testcase name="[It] [sig-node] AppArmor load profile [Feature:AppArmor]" classname="Kubernetes e2e suite" status="skipped" time="0"><skipped message="skipped"></skipped></testcase>
    <testcase name="[It] [sig-storage] Volumes NFS" classname="Kubernetes e2e suite" status="skipped" time="0"><skipped message="skipped"></skipped></testcase>
    <testcase name="[It] [sig-node] Container Runtime should not be able to pull from private registry with secret [NodeConformance]" classname="Kubernetes e2e suite" status="skipped" time="0.1"><skipped message="skipped - Only supported for node OS distro [gci ubuntu]"></skipped></testcase>
  </testsuite>
</testsuites>`

func TestSummarize(t *testing.T) {
	s, err := summarize(strings.NewReader(report))
	if err != nil {
		t.Fatal(err)
	}
	if s.Passed != 1 || s.Skipped != 1 || s.NotSelected != 2 || len(s.Failed) != 2 {
		t.Errorf("summary %+v", s)
	}
	var b bytes.Buffer
	s.write(&b)
	for _, want := range []string{
		"selected 4: passed 1, failed 2, skipped at run time 1 (not selected 2, pending 0)",
		"FAILED [It] [sig-node] Probing container should be restarted [NodeConformance]",
		"FAILED [It] [sig-node] Sysctls should support sysctls",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("summary lacks %q:\n%s", want, b.String())
		}
	}
}

func TestSummarizeRejectsGarbage(t *testing.T) {
	if _, err := summarize(strings.NewReader("<testsuites><testsuite>")); err == nil {
		t.Error("no error for a truncated report")
	}
}
