// Command devcloud serves a local EC2 whose instances are QEMU VMs (devcloud/ec2 with vmrunner): the EC2 Query API
// and the EBS direct APIs the aws backend calls, at one loopback URL, so that `i2kit node --backend aws` runs
// unmodified against it (aws.endpoint). Instances boot on bridges of this network namespace, one per subnet,
// with DHCP and the instance metadata service at 169.254.169.254; run it as root, in a namespace of its own (the
// demo's: `make demo BACKEND=aws`). It is a development tool, never part of the node's binary; its state (volumes,
// snapshot blocks) lives in --state and its instances end with it.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	sdkaws "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	awsec2 "github.com/aws/aws-sdk-go-v2/service/ec2"

	"github.com/i2kit/i2kit/devcloud/ec2"
	"github.com/i2kit/i2kit/devcloud/ec2/vmrunner"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "devcloud:", err)
		os.Exit(1)
	}
}

func run() error {
	addr := flag.String("addr", "127.0.0.1:4566", "address to serve the EC2 and EBS direct APIs at")
	state := flag.String("state", "", "directory of the instances' volumes and the snapshots' blocks (required)")
	ovmf := flag.String("ovmf", "/usr/share/ovmf/OVMF.fd", "UEFI firmware of the instances")
	memory := flag.Int64("max-memory-mib", 384, "cap of an instance's memory, whatever its type says")
	cpus := flag.Int("max-cpus", 1, "cap of an instance's vCPUs")
	list := flag.Bool("list", false, "list the instances of the devcloud serving at --addr (DescribeInstances) and exit")
	flag.Parse()
	if *list {
		return listInstances(*addr)
	}
	if *state == "" {
		return errors.New("--state is required")
	}
	if os.Geteuid() != 0 {
		return errors.New("run as root: instances get bridges, TAPs, DHCP and the metadata address")
	}
	r, err := vmrunner.New(vmrunner.Config{StateDir: filepath.Join(*state, "instances"), OVMF: *ovmf,
		MaxMemoryMiB: *memory, MaxCPUs: *cpus})
	if err != nil {
		return err
	}
	defer func() {
		if err := r.Close(); err != nil {
			fmt.Fprintln(os.Stderr, "devcloud: ending the instances:", err)
		}
	}()
	srv := ec2.New(ec2.Options{Runner: r, BlockDir: filepath.Join(*state, "blocks")})
	r.Attach(srv)
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return fmt.Errorf("listening, %w", err)
	}
	hs := &http.Server{Handler: srv, ReadHeaderTimeout: 10 * time.Second}
	served := make(chan error, 1)
	go func() { served <- hs.Serve(ln) }()

	var subnets, groups []string
	for _, s := range ec2.DefaultSubnets() {
		subnets = append(subnets, s.ID)
	}
	for _, g := range ec2.DefaultSecurityGroups() {
		groups = append(groups, g.ID)
	}
	// The URL line first, then the fixtures a node's aws section names (scripts/demo.sh reads them).
	fmt.Printf("devcloud serving EC2 at http://%s\nsubnets: [%s]\nsecurityGroups: [%s]\n", ln.Addr(),
		strings.Join(subnets, ", "), strings.Join(groups, ", "))

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	select {
	case err := <-served:
		return fmt.Errorf("serving, %w", err)
	case s := <-sig:
		fmt.Printf("devcloud: %s, ending the instances\n", s)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return hs.Shutdown(ctx)
}

// listInstances prints the instances of the devcloud at addr, as the node's SDK client sees them.
func listInstances(addr string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c := awsec2.NewFromConfig(sdkaws.Config{Region: "us-east-1", BaseEndpoint: sdkaws.String("http://" + addr),
		Credentials: credentials.NewStaticCredentialsProvider("AKIDDEVCLOUD", "devcloud", "")})
	p := awsec2.NewDescribeInstancesPaginator(c, &awsec2.DescribeInstancesInput{})
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "INSTANCE\tSTATE\tTYPE\tPRIVATE IP\tAMI\tNAME")
	for p.HasMorePages() {
		out, err := p.NextPage(ctx)
		if err != nil {
			return fmt.Errorf("listing instances, %w", err)
		}
		for _, r := range out.Reservations {
			for _, in := range r.Instances {
				name := ""
				for _, t := range in.Tags {
					if sdkaws.ToString(t.Key) == "Name" {
						name = sdkaws.ToString(t.Value)
					}
				}
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", sdkaws.ToString(in.InstanceId), in.State.Name, in.InstanceType,
					sdkaws.ToString(in.PrivateIpAddress), sdkaws.ToString(in.ImageId), name)
			}
		}
	}
	return w.Flush()
}
