// Package e2e holds gochat's heavy black-box tests in a module of their own,
// so that their dependencies (chromedp, BuildKit, compose-go, patternmatcher,
// nats-server, creack/pty) stay out of gochat's go.mod and out of the image
// build:
//
//   - e2e_test.go: the chat page in a real headless Chromium
//   - deploy_test.go: Dockerfile, .dockerignore and docker-compose.yml
//   - wscat_test.go: the README's wscat session with the real wscat
//   - reliability_process_test.go: the real binary under process-level faults
//   - cluster_test.go: nodes sharing one chat through an embedded nats-server
//
// harness_test.go has what they share: the binary (built once per run), its
// process, the one polling helper and the one raw WebSocket client.
//
// Run from this directory:
//
//	go test -race ./...
package e2e
