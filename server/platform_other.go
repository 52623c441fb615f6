//go:build !linux

// gochat's reactor is built on epoll (easygo netpoll), which exists on
// Linux only: build and run gochat on Linux, or in its container image.
//
// On any other OS this file imports a package that does not exist, whose
// path says why, so `go build` stops at once with that one message
// instead of a page of "undefined: netpoll.Epoll".

package server

import _ "gochat/gochat_requires_linux_epoll_build_on_linux_or_in_docker"
