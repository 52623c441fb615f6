// gochat browser client.
//
// Plain script, no build step, no third-party code. Served from /static/app.js
// under a strict CSP (script-src 'self', style-src 'self'): nothing here uses
// inline styles, eval or innerHTML. Every piece of user-supplied text reaches
// the DOM through textContent only, so HTML in a message is shown as text.
(function () {
  'use strict';

  var SYSTEM = 'System';
  var ERROR_PREFIX = 'Error: ';
  var BACKOFF_MIN_MS = 500;     // first retry after ~0.5 s
  var BACKOFF_MAX_MS = 10000;   // never wait more than ~10 s
  var STABLE_AFTER_MS = 5000;   // a connection open this long resets the backoff
  var MAX_MESSAGES = 1000;      // keep the DOM bounded in long sessions
  var MAX_NAME_RETRIES = 5;     // rejoin attempts while our old session still holds the name
  var CLOSE_NORMAL = 1000;
  var CLOSE_POLICY = 1008;

  var el = {
    status: document.getElementById('status'),
    whoami: document.getElementById('whoami'),
    joinView: document.getElementById('join-view'),
    joinForm: document.getElementById('join-form'),
    username: document.getElementById('username'),
    joinButton: document.getElementById('join'),
    joinError: document.getElementById('join-error'),
    chatView: document.getElementById('chat-view'),
    messages: document.getElementById('messages'),
    sendForm: document.getElementById('send-form'),
    message: document.getElementById('message'),
    sendButton: document.getElementById('send'),
    leave: document.getElementById('leave')
  };

  var state = {
    name: '',            // the name we joined (or are joining) under
    ws: null,            // current socket, if any
    wanted: false,       // true while the user wants to be in the chat
    everJoined: false,   // a join under state.name went through at least once
    attempt: 0,          // consecutive failed connection attempts (backoff exponent)
    nameRetries: 0,      // rejoins refused because the name was still held
    lastError: '',       // last "Error: ..." the server sent on this socket
    retryTimer: 0,
    countdownTimer: 0,
    stableTimer: 0,
    retryAt: 0
  };

  function wsURL() {
    return (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/ws';
  }

  // ---- status indicator -------------------------------------------------

  function setStatus(kind, text) {
    el.status.className = 'status ' + kind;
    el.status.textContent = text;
    var live = kind === 'connected';
    el.sendButton.disabled = !live;
    el.chatView.classList.toggle('offline', !live);
  }

  function showCountdown() {
    var left = Math.max(0, state.retryAt - Date.now());
    var secs = left >= 1000 ? Math.round(left / 1000) + 's' : (left / 1000).toFixed(1) + 's';
    setStatus('disconnected', 'disconnected \u2014 reconnecting in ' + secs);
  }

  // ---- views --------------------------------------------------------------

  function showJoin(errorText) {
    el.chatView.hidden = true;
    el.joinView.hidden = false;
    el.whoami.hidden = true;
    if (errorText) {
      el.joinError.textContent = errorText;
      el.joinError.hidden = false;
    } else {
      el.joinError.textContent = '';
      el.joinError.hidden = true;
    }
    el.username.value = state.name || el.username.value;
    el.username.focus();
    el.username.select();
  }

  function showChat() {
    el.joinView.hidden = true;
    el.joinError.hidden = true;
    el.chatView.hidden = false;
    el.whoami.textContent = state.name;
    el.whoami.hidden = false;
    el.message.focus();
  }

  // ---- message list ---------------------------------------------------------

  function sameName(a, b) {
    var norm = function (s) {
      s = String(s);
      if (s.normalize) { s = s.normalize('NFKC'); }
      return s.toLowerCase();
    };
    return norm(a) === norm(b);
  }

  function nearBottom() {
    var m = el.messages;
    return m.scrollHeight - m.scrollTop - m.clientHeight < 48;
  }

  function addMessage(username, content, kind) {
    var stick = nearBottom();
    var li = document.createElement('li');
    li.className = 'msg ' + kind;
    var who = document.createElement('span');
    who.className = 'user';
    who.textContent = username;
    var text = document.createElement('span');
    text.className = 'content';
    text.textContent = content;
    li.appendChild(who);
    li.appendChild(text);
    el.messages.appendChild(li);
    while (el.messages.childElementCount > MAX_MESSAGES) {
      el.messages.removeChild(el.messages.firstElementChild);
    }
    if (stick) { el.messages.scrollTop = el.messages.scrollHeight; }
  }

  // A note from the page itself (not from the server).
  function addLocalNote(text) {
    addMessage(SYSTEM, text, 'system local');
  }

  function onFrame(ev) {
    if (typeof ev.data !== 'string') { return; }
    var msg;
    try { msg = JSON.parse(ev.data); } catch (e) { return; }
    if (!msg || typeof msg !== 'object') { return; }
    var username = typeof msg.username === 'string' ? msg.username : '';
    var content = typeof msg.content === 'string' ? msg.content : '';
    if (username === SYSTEM) {
      if (content.indexOf(ERROR_PREFIX) === 0) {
        state.lastError = content;
        addMessage(username, content, 'system error');
      } else {
        addMessage(username, content, 'system');
      }
      return;
    }
    addMessage(username, content, sameName(username, state.name) ? 'chat own' : 'chat');
  }

  // ---- connection -----------------------------------------------------------

  function clearTimers() {
    clearTimeout(state.retryTimer);
    clearInterval(state.countdownTimer);
    clearTimeout(state.stableTimer);
    state.retryTimer = state.countdownTimer = state.stableTimer = 0;
  }

  function connect() {
    clearTimers();
    if (state.ws) { return; }
    state.lastError = '';
    setStatus('connecting', 'connecting');
    var ws;
    try {
      ws = new WebSocket(wsURL());
    } catch (e) {
      scheduleReconnect();
      return;
    }
    state.ws = ws;
    ws.onopen = function () {
      if (state.ws !== ws) { return; }
      // The first frame joins (or, after a reconnect, rejoins) under the same name.
      ws.send(JSON.stringify({ username: state.name, content: '' }));
      setStatus('connected', 'connected');
      showChat();
      state.stableTimer = setTimeout(function () {
        if (state.ws === ws) {
          state.attempt = 0;
          state.nameRetries = 0;
          state.everJoined = true;
        }
      }, STABLE_AFTER_MS);
    };
    ws.onmessage = function (ev) {
      if (state.ws !== ws) { return; }
      onFrame(ev);
      // Any non-error frame means the join went through.
      if (!state.lastError) {
        state.everJoined = true;
        state.attempt = 0;
        state.nameRetries = 0;
      }
    };
    ws.onclose = function (ev) {
      if (state.ws !== ws) { return; }
      state.ws = null;
      clearTimers();
      onClosed(ev.code, ev.reason || '');
    };
    // onerror is always followed by onclose; nothing to do here.
    ws.onerror = function () {};
  }

  function onClosed(code, reason) {
    if (!state.wanted) {
      setStatus('disconnected', 'disconnected');
      return;
    }
    if (code === CLOSE_POLICY) {
      var err = state.lastError || (reason ? ERROR_PREFIX + reason : 'Error: the server refused the connection');
      // After a reconnect, our previous connection may still hold the name on
      // the server for a moment; retry a few times before giving up.
      if (state.everJoined && /taken|in use|already/i.test(err) &&
          state.nameRetries < MAX_NAME_RETRIES) {
        state.nameRetries++;
        scheduleReconnect();
        return;
      }
      // A refused join or a policy disconnect: never retry with the same name
      // automatically; hand control back to the person.
      state.wanted = false;
      state.everJoined = false;
      setStatus('disconnected', 'disconnected');
      showJoin(err.indexOf(ERROR_PREFIX) === 0 ? err.slice(ERROR_PREFIX.length) : err);
      return;
    }
    // 1001 (server shutting down), 1006 (connection lost) and everything else:
    // reconnect with exponential backoff and rejoin under the same name.
    if (!el.chatView.hidden) {
      addLocalNote(code === 1001 ? 'The server is restarting; reconnecting\u2026'
                                 : 'Connection lost; reconnecting\u2026');
    }
    scheduleReconnect();
  }

  function backoffDelay(attempt) {
    var base = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * Math.pow(2, attempt));
    // +/-25% jitter so that a restarted server is not hit by every client at once.
    var d = base * (0.75 + Math.random() * 0.5);
    return Math.round(Math.min(BACKOFF_MAX_MS, d));
  }

  function scheduleReconnect() {
    clearTimers();
    var delay = backoffDelay(state.attempt);
    state.attempt++;
    state.retryAt = Date.now() + delay;
    showCountdown();
    state.countdownTimer = setInterval(showCountdown, 250);
    state.retryTimer = setTimeout(connect, delay);
  }

  function reconnectNow() {
    if (state.wanted && !state.ws && state.retryTimer) { connect(); }
  }

  // ---- user actions -------------------------------------------------------

  function join() {
    var name = el.username.value.trim();
    if (!name) {
      showJoin('Please enter a username.');
      return;
    }
    if (state.ws) {
      state.ws.onclose = null;
      try { state.ws.close(CLOSE_NORMAL); } catch (e) { /* ignore */ }
      state.ws = null;
    }
    state.name = name;
    state.wanted = true;
    state.everJoined = false;
    state.attempt = 0;
    state.nameRetries = 0;
    el.joinError.hidden = true;
    connect();
  }

  function send() {
    var text = el.message.value;
    if (!text.trim()) { return; }
    var ws = state.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) {
      // Keep the text in the box; it can be sent once we are connected again.
      return;
    }
    ws.send(JSON.stringify({ content: text }));
    el.message.value = '';
    el.message.focus();
  }

  function leave() {
    state.wanted = false;
    state.everJoined = false;
    clearTimers();
    var ws = state.ws;
    state.ws = null;
    if (ws) {
      ws.onclose = null;
      try { ws.close(CLOSE_NORMAL); } catch (e) { /* ignore */ }
    }
    setStatus('disconnected', 'disconnected');
    showJoin('');
  }

  el.joinForm.addEventListener('submit', function (ev) {
    ev.preventDefault();
    join();
  });
  el.sendForm.addEventListener('submit', function (ev) {
    ev.preventDefault();
    send();
  });
  el.leave.addEventListener('click', leave);
  // Clicking the status while waiting to reconnect retries at once.
  el.status.addEventListener('click', reconnectNow);
  window.addEventListener('online', reconnectNow);
  document.addEventListener('visibilitychange', function () {
    if (!document.hidden) { reconnectNow(); }
  });

  setStatus('disconnected', 'disconnected');
  showJoin('');
}());
