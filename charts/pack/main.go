// Command pack writes the i2kit Helm chart, stamped with a release version, as a .tgz into a directory: what
// `make chart` runs.
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/i2kit/i2kit/charts"
)

func main() {
	version := flag.String("version", "", "the release version (git describe): appVersion, and the chart version when it is SemVer")
	out := flag.String("out", "bin", "directory the chart archive is written to")
	flag.Parse()
	if *version == "" || flag.NArg() > 0 {
		fmt.Fprintln(os.Stderr, "usage: pack -version VERSION [-out DIR]")
		os.Exit(2)
	}
	p, err := charts.Package(*out, *version)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println(p)
}
