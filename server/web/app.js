// gochat browser client.
//
// Plain script, no build step, no third-party code. Served from /static/app.js
// under a strict CSP (script-src 'self', style-src 'self'): nothing here uses
// inline styles, eval or innerHTML. Every piece of user-supplied text reaches
// the DOM through textContent only, so HTML in a message is shown as text.
//
// Rooms and resume (SPEC §8): the page joins one room (from the form or the
// URL fragment, #room-name), speaks the gochat.v2 subprotocol so that every
// message carries an id, and remembers the highest id it has shown. The first
// join asks for recent history (?history=N); every reconnect after that asks
// for exactly what came after that id (?since=ID), so nothing is missed or
// shown twice. The server guarantees that; the page deliberately does not
// de-duplicate by id itself. If the server can no longer reach back that far
// it says so in one "gap" frame, shown as a visible note.
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
  var SUBPROTOCOL = 'gochat.v2';
  var DEFAULT_ROOM = 'lobby';
  // The server's rule for room names (chatmsg.ValidRoom): 1-64 of a-z 0-9 - _ .
  // starting with a letter or digit.
  var ROOM_RE = /^[a-z0-9][a-z0-9._-]{0,63}$/;
  var ROOM_RULE = 'Room names are 1\u201364 characters: lower-case letters a\u2013z, ' +
                  'digits, "-", "_" and ".", starting with a letter or digit.';
  var HISTORY_ON_JOIN = 50;      // messages replayed on the first join
  var MEMBERS_DEBOUNCE_MS = 150; // join/leave notices often come in bursts
  var MEMBERS_REFRESH_MS = 30000; // a safety net only: notices and reconnects refresh at once

  var el = {
    status: document.getElementById('status'),
    whoami: document.getElementById('whoami'),
    roomLabel: document.getElementById('room-label'),
    joinView: document.getElementById('join-view'),
    joinForm: document.getElementById('join-form'),
    username: document.getElementById('username'),
    room: document.getElementById('room'),
    roomList: document.getElementById('room-list'),
    joinButton: document.getElementById('join'),
    joinError: document.getElementById('join-error'),
    chatView: document.getElementById('chat-view'),
    messages: document.getElementById('messages'),
    who: document.getElementById('who'),
    members: document.getElementById('members'),
    memberCount: document.getElementById('member-count'),
    sendForm: document.getElementById('send-form'),
    message: document.getElementById('message'),
    sendButton: document.getElementById('send'),
    leave: document.getElementById('leave')
  };

  var state = {
    name: '',            // the name we joined (or are joining) under
    room: DEFAULT_ROOM,  // the room we joined (or are joining)
    lastId: 0,           // highest message id shown in this room; 0: none yet
    joinedSocket: false, // the current socket's join went through
    ws: null,            // current socket, if any
    wanted: false,       // true while the user wants to be in the chat
    everJoined: false,   // a join under state.name went through at least once
    attempt: 0,          // consecutive failed connection attempts (backoff exponent)
    nameRetries: 0,      // rejoins refused because the name was still held
    lastError: '',       // last "Error: ..." the server sent on this socket
    retryTimer: 0,
    countdownTimer: 0,
    stableTimer: 0,
    retryAt: 0,
    membersTimer: 0,     // debounced who-is-here refresh
    membersPoll: 0,      // periodic who-is-here refresh while connected
    membersSeq: 0        // answers to older requests are dropped
  };

  function validRoom(room) {
    return ROOM_RE.test(room);
  }

  // The room named by the URL fragment (#room-name), or '' if none.
  function roomFromHash() {
    var h = location.hash.replace(/^#/, '');
    try { h = decodeURIComponent(h); } catch (e) { /* keep it raw */ }
    return h.trim();
  }

  // The first connection asks for recent history; later ones resume after the
  // last id shown. A valid room name needs no escaping in a query string.
  function wsURL() {
    var q = '?room=' + state.room +
      (state.lastId > 0 ? '&since=' + String(state.lastId) : '&history=' + HISTORY_ON_JOIN);
    return (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/ws' + q;
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
    el.roomLabel.hidden = true;
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
    loadRoomList();
  }

  function showChat() {
    el.joinView.hidden = true;
    el.joinError.hidden = true;
    el.chatView.hidden = false;
    el.whoami.textContent = state.name;
    el.whoami.hidden = false;
    el.roomLabel.textContent = '#' + state.room;
    el.roomLabel.hidden = false;
    el.message.focus();
  }

  function clearMessages() {
    el.messages.replaceChildren();
  }

  // ---- rooms: the list to pick from, and who is here --------------------------

  function getJSON(path) {
    return fetch(path, { cache: 'no-store', headers: { Accept: 'application/json' } })
      .then(function (r) { return r.ok ? r.json() : Promise.reject(new Error(r.status)); });
  }

  // Fills the join form's datalist with the rooms that have members.
  function loadRoomList() {
    getJSON('/rooms').then(function (data) {
      var rooms = data && Array.isArray(data.rooms) ? data.rooms : [];
      var opts = [];
      rooms.forEach(function (r) {
        if (!r || typeof r.name !== 'string') { return; }
        var o = document.createElement('option');
        o.value = r.name;
        o.textContent = r.name + ' (' + (Number(r.members) || 0) + ')';
        opts.push(o);
      });
      el.roomList.replaceChildren.apply(el.roomList, opts);
    }).catch(function () { /* the list is a convenience only */ });
  }

  function renderMembers(names, total) {
    var items = names.map(function (n) {
      var li = document.createElement('li');
      li.className = sameName(n, state.name) ? 'member me' : 'member';
      li.textContent = n;
      return li;
    });
    if (total > names.length) {
      var more = document.createElement('li');
      more.className = 'member more';
      more.textContent = 'and ' + (total - names.length) + ' more';
      items.push(more);
    }
    el.members.replaceChildren.apply(el.members, items);
    el.memberCount.textContent = '(' + total + ')';
  }

  function refreshMembers() {
    clearTimeout(state.membersTimer);
    state.membersTimer = 0;
    var seq = ++state.membersSeq;
    var room = state.room;
    getJSON('/rooms/' + room).then(function (data) {
      if (seq !== state.membersSeq || room !== state.room || !state.wanted) { return; }
      var names = data && Array.isArray(data.members) ? data.members.filter(function (n) {
        return typeof n === 'string';
      }) : [];
      var total = data && typeof data.total === 'number' ? data.total : names.length;
      renderMembers(names, total);
    }).catch(function () { /* kept as it was; refreshed on the next notice or reconnect */ });
  }

  function scheduleMembers() {
    if (!state.membersTimer) {
      state.membersTimer = setTimeout(refreshMembers, MEMBERS_DEBOUNCE_MS);
    }
  }

  function startMembersPoll() {
    clearInterval(state.membersPoll);
    state.membersPoll = setInterval(refreshMembers, MEMBERS_REFRESH_MS);
  }

  function stopMembers() {
    clearTimeout(state.membersTimer);
    clearInterval(state.membersPoll);
    state.membersTimer = state.membersPoll = 0;
    state.membersSeq++;
    el.members.replaceChildren();
    el.memberCount.textContent = '';
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
    // Remember the highest id shown: a reconnect resumes after it. Frames
    // without an id (errors, the gap note) do not move it.
    if (typeof msg.id === 'number' && isFinite(msg.id) && msg.id > state.lastId) {
      state.lastId = msg.id;
    }
    if (username === SYSTEM) {
      if (msg.gap === true) {
        // History no longer reaches back to our last id: say so, visibly.
        addMessage(username, content || 'Some messages were missed.', 'system gap');
      } else if (content.indexOf(ERROR_PREFIX) === 0) {
        state.lastError = content;
        addMessage(username, content, 'system error');
      } else {
        addMessage(username, content, 'system');
        if (/ (joined|left) the chat$/.test(content)) { scheduleMembers(); }
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
    state.joinedSocket = false;
    try {
      ws = new WebSocket(wsURL(), [SUBPROTOCOL]);
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
        if (!state.joinedSocket) {
          // (Re)joined: who is here may have changed while we were away.
          state.joinedSocket = true;
          refreshMembers();
          startMembersPoll();
        }
      }
    };
    ws.onclose = function (ev) {
      if (state.ws !== ws) { return; }
      state.ws = null;
      state.joinedSocket = false;
      clearInterval(state.membersPoll);
      state.membersPoll = 0;
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
      stopMembers();
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
    var room = el.room.value.trim() || DEFAULT_ROOM;
    if (!name) {
      showJoin('Please enter a username.');
      return;
    }
    if (!validRoom(room)) {
      showJoin(ROOM_RULE);
      el.room.focus();
      el.room.select();
      return;
    }
    enter(name, room);
  }

  // enter joins room as name: a fresh start, with recent history, in a
  // cleared message list (the list belongs to one room and one join).
  function enter(name, room) {
    if (state.ws) {
      state.ws.onclose = null;
      try { state.ws.close(CLOSE_NORMAL); } catch (e) { /* ignore */ }
      state.ws = null;
    }
    stopMembers();
    clearMessages();
    state.room = room;
    state.lastId = 0;
    el.room.value = room;
    if (roomFromHash() !== room) {
      history.replaceState(null, '', '#' + room);
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
    stopMembers();
    setStatus('disconnected', 'disconnected');
    showJoin('');
  }

  // A new fragment picks the room: in the chat it moves there under the same
  // name; on the join form it fills in the room field.
  function onHashChange() {
    var room = roomFromHash();
    if (!room || (room === state.room && state.wanted)) { return; }
    if (state.wanted && state.name) {
      if (validRoom(room)) {
        enter(state.name, room);
      } else {
        addLocalNote('Not a room name: ' + room + '. ' + ROOM_RULE);
      }
      return;
    }
    el.room.value = room;
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
  window.addEventListener('hashchange', onHashChange);
  document.addEventListener('visibilitychange', function () {
    if (!document.hidden) { reconnectNow(); }
  });

  el.room.value = roomFromHash() || DEFAULT_ROOM;
  el.who.open = !(window.matchMedia && window.matchMedia('(max-width: 40rem)').matches);
  setStatus('disconnected', 'disconnected');
  showJoin('');
}());
