// Command hello is the example HTTP server the demo and the tests run in pod VMs: it answers every request with
// a greeting naming the host (the pod) and logs each request on stdout; /redirect?loc=URL redirects to URL.
package main

import (
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"time"
)

func main() {
	get := flag.String("get", "", "instead of serving, fetch this URL (retrying for 10 s) and print the answer")
	flag.Parse()
	if *get != "" {
		os.Exit(fetch(*get))
	}
	port := os.Getenv("PORT")
	if port == "" {
		port = "8080"
	}
	host, _ := os.Hostname()
	log.SetOutput(os.Stdout)
	log.Printf("hello: listening on :%s as %s (uid %d)", port, host, os.Getuid())
	// /redirect?loc=URL answers with a redirect to URL, as Kubernetes' agnhost netexec does (probe specs).
	http.HandleFunc("/redirect", func(w http.ResponseWriter, r *http.Request) {
		log.Printf("hello: %s %s from %s", r.Method, r.URL.Path, r.RemoteAddr)
		http.Redirect(w, r, r.URL.Query().Get("loc"), http.StatusFound)
	})
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		log.Printf("hello: %s %s from %s", r.Method, r.URL.Path, r.RemoteAddr)
		fmt.Fprintf(w, "hello from %s\n", host)
	})
	log.Fatal(http.ListenAndServe(":"+port, nil))
}

func fetch(url string) int {
	var err error
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		var resp *http.Response
		if resp, err = http.Get(url); err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			fmt.Printf("%s %s", resp.Status, b)
			return 0
		}
	}
	fmt.Fprintln(os.Stderr, "hello:", err)
	return 1
}
