// Conversa operator console. Plain JavaScript, no build step: served as is by the gateway.
//
// How it stays complete: it first subscribes to the stream (live events are buffered), then
// loads the conversations through the REST API, then applies the buffered events. Every event
// carries the tenant-wide `seq`; after a network drop the console reconnects with
// `?since=<last seq>` and the server replays what it missed, so nothing is lost or shown twice.
// When the server answers `resync_required`, the console reloads everything the same way.
'use strict';

(() => {
  const KEY_STORAGE = 'conversa.apiKey';
  const PAGE = 50;
  const PING_EVERY_MS = 20000;
  const PING_TIMEOUT_MS = 10000;
  const COMMAND_TIMEOUT_MS = 15000;

  const STATE_LABEL = {
    IA_ATIVA: 'IA ativa',
    AGUARDANDO_HUMANO: 'Aguardando humano',
    HUMANO_RESPONDEU: 'Humano respondeu',
  };
  const REASON_LABEL = {
    low_confidence: 'a IA não tinha confiança na resposta',
    handoff_keyword: 'o cliente pediu atendimento humano',
    operator_takeover: 'um operador assumiu',
    human_reply: 'um operador respondeu',
    phone_reply: 'resposta pelo celular da empresa',
    human_timeout: 'tempo de atendimento humano esgotado',
    operator_release: 'um operador devolveu para a IA',
    llm_failure: 'falha da IA',
  };
  const AUTHOR_LABEL = { contact: 'Cliente', assistant: 'Assistente', human: 'Operador' };
  const KIND_LABEL = {
    image: 'Imagem', video: 'Vídeo', audio: 'Áudio', document: 'Documento', sticker: 'Figurinha',
    reaction: 'Reação', location: 'Localização', contact: 'Contato', interactive: 'Mensagem interativa',
    unsupported: 'Mensagem não suportada',
  };
  const STATUS_RANK = { pending: 0, sent: 1, delivered: 2, read: 3 };
  const STATUS_LABEL = {
    pending: 'Enviando', sent: 'Enviada', delivered: 'Entregue', read: 'Lida', failed: 'Falhou',
  };
  const ERROR_TEXT = {
    invalid_field: 'A mensagem está vazia ou é inválida.',
    invalid_conversation: 'Conversa inválida.',
    not_found: 'Conversa não encontrada.',
    conflict: 'A conversa mudou de estado. Tente de novo.',
    unavailable: 'O serviço está indisponível no momento. Tente de novo.',
    busy: 'Muitas ações ao mesmo tempo. Aguarde um instante.',
    timeout: 'O servidor não confirmou a tempo. Confira a conversa antes de repetir.',
    network: 'Sem conexão com o servidor. Tente de novo.',
  };

  const $ = (id) => document.getElementById(id);
  const el = (tag, cls, text) => {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text;
    return node;
  };

  const S = {
    key: null,
    ws: null,
    gen: 0, // identifies the current socket; handlers of older sockets do nothing
    lastSeq: null, // every event up to this seq has been received; null: reload needed
    loading: false,
    buffer: [],
    retry: 0,
    reconnectTimer: null,
    pingTimer: null,
    pingWait: null,
    convs: new Map(),
    nextCursor: null,
    open: null,
    messages: new Map(),
    hasOlder: false,
    pending: new Map(),
    nextRef: 0,
  };

  // ---------------------------------------------------------------- formatting

  function formatContact(digits) {
    // A person WhatsApp shows only by a hidden id (no phone number).
    if (digits.endsWith('@lid')) return `Contato oculto ${digits.slice(0, -4)}`;
    if (/^55\d{10,11}$/.test(digits)) {
      const ddd = digits.slice(2, 4);
      const rest = digits.slice(4);
      const cut = rest.length - 4;
      return `+55 ${ddd} ${rest.slice(0, cut)}-${rest.slice(cut)}`;
    }
    return `+${digits}`;
  }

  const timeFmt = new Intl.DateTimeFormat('pt-BR', { hour: '2-digit', minute: '2-digit' });
  const dateFmt = new Intl.DateTimeFormat('pt-BR', { day: '2-digit', month: '2-digit' });
  function formatWhen(iso) {
    if (!iso) return '';
    const d = new Date(iso);
    if (Number.isNaN(d.getTime())) return '';
    const today = new Date();
    return d.toDateString() === today.toDateString() ? timeFmt.format(d) : `${dateFmt.format(d)} ${timeFmt.format(d)}`;
  }
  const millis = (iso) => (iso ? Date.parse(iso) || 0 : 0);

  function messageText(m) {
    if (m.amended && m.amended.change === 'revoked') return 'Mensagem apagada';
    if (m.text && m.text.trim() !== '') return m.text;
    return `[${KIND_LABEL[m.kind] || 'Mensagem'}]`;
  }

  // ---------------------------------------------------------------- REST

  class Failure extends Error {
    constructor(code, status) {
      super(code);
      this.code = code;
      this.status = status;
    }
  }

  async function api(path, options = {}) {
    const headers = { Authorization: `Bearer ${S.key}` };
    if (options.body !== undefined) headers['Content-Type'] = 'application/json';
    let res;
    try {
      res = await fetch(path, {
        method: options.method || 'GET',
        headers,
        body: options.body === undefined ? undefined : JSON.stringify(options.body),
        cache: 'no-store',
      });
    } catch (_) {
      throw new Failure('network', 0);
    }
    const body = await res.json().catch(() => null);
    if (res.status === 401) {
      signOut('Sua chave de API não é mais aceita. Entre de novo.');
      throw new Failure('unauthorized', 401);
    }
    if (!res.ok) throw new Failure((body && body.error && body.error.code) || 'internal', res.status);
    return body;
  }

  // ---------------------------------------------------------------- sign in / out

  function storedKey() {
    return sessionStorage.getItem(KEY_STORAGE) || localStorage.getItem(KEY_STORAGE);
  }

  async function signIn(event) {
    event.preventDefault();
    const key = $('api-key').value.trim();
    const error = $('login-error');
    error.hidden = true;
    if (!key) {
      showLoginError('Informe a chave de API.');
      return;
    }
    $('login-submit').disabled = true;
    try {
      const res = await fetch('/api/v1/settings', { headers: { Authorization: `Bearer ${key}` }, cache: 'no-store' });
      if (res.status === 401) {
        showLoginError('Chave de API inválida. Confira e tente de novo.');
        return;
      }
      if (!res.ok) {
        showLoginError('O servidor não respondeu como esperado. Tente de novo.');
        return;
      }
    } catch (_) {
      showLoginError('Sem conexão com o servidor. Tente de novo.');
      return;
    } finally {
      $('login-submit').disabled = false;
    }
    sessionStorage.setItem(KEY_STORAGE, key);
    if ($('remember').checked) localStorage.setItem(KEY_STORAGE, key);
    $('api-key').value = '';
    start(key);
  }

  function showLoginError(text) {
    const error = $('login-error');
    error.textContent = text;
    error.hidden = false;
    $('api-key').focus();
  }

  function start(key) {
    S.key = key;
    S.lastSeq = null;
    S.convs = new Map();
    S.open = null;
    $('login').hidden = true;
    $('app').hidden = false;
    showList();
    renderList();
    connect();
  }

  function signOut(message) {
    S.key = null;
    S.gen += 1;
    if (S.ws) S.ws.close(1000);
    S.ws = null;
    clearTimeout(S.reconnectTimer);
    clearInterval(S.pingTimer);
    clearTimeout(S.pingWait);
    failPending('network');
    sessionStorage.removeItem(KEY_STORAGE);
    localStorage.removeItem(KEY_STORAGE);
    $('app').hidden = true;
    $('login').hidden = false;
    if (message) showLoginError(message);
    else $('api-key').focus();
  }

  // ---------------------------------------------------------------- the stream

  function setConnection(state, text) {
    const node = $('connection');
    if (node.dataset.state === state && node.textContent === text) return;
    node.dataset.state = state;
    node.textContent = text;
  }

  function streamUrl() {
    const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
    let url = `${proto}//${location.host}/api/v1/stream?access_token=${encodeURIComponent(S.key)}`;
    if (S.lastSeq !== null) url += `&since=${S.lastSeq}`;
    return url;
  }

  function connect() {
    clearTimeout(S.reconnectTimer);
    const gen = ++S.gen;
    if (S.lastSeq === null) {
      // A fresh start: buffer live events until the REST load is done.
      S.loading = true;
      S.buffer = [];
    }
    setConnection(S.retry ? 'reconnecting' : 'connecting', S.retry ? 'Reconectando…' : 'Conectando…');
    let ws;
    try {
      ws = new WebSocket(streamUrl());
    } catch (_) {
      scheduleReconnect();
      return;
    }
    S.ws = ws;
    ws.onmessage = (m) => {
      if (gen !== S.gen) return;
      let frame;
      try {
        frame = JSON.parse(m.data);
      } catch (_) {
        return;
      }
      onFrame(frame);
    };
    ws.onclose = (e) => {
      if (gen !== S.gen) return;
      onDisconnect(e.code);
    };
  }

  function onFrame(f) {
    switch (f.type) {
      case 'ready':
        S.lastSeq = S.lastSeq === null ? f.seq : Math.max(S.lastSeq, f.seq);
        S.retry = 0;
        setConnection('live', 'Ao vivo');
        startPings();
        if (S.loading) reload();
        return;
      case 'ack':
      case 'error':
        settle(f);
        return;
      case 'resync_required':
        // The server closes next; the close handler reloads.
        S.lastSeq = null;
        return;
      default:
        if (typeof f.seq !== 'number') return;
        if (S.lastSeq !== null && f.seq <= S.lastSeq) return; // already seen
        S.lastSeq = f.seq;
        if (S.loading) S.buffer.push(f);
        else apply(f);
    }
  }

  function onDisconnect(code) {
    S.ws = null;
    S.gen += 1;
    clearInterval(S.pingTimer);
    clearTimeout(S.pingWait);
    failPending('network');
    if (!S.key) return;
    if (code === 4003) {
      signOut('Esta empresa não existe mais no Conversa.');
      return;
    }
    if (code === 4000) S.lastSeq = null; // resync_required: reload everything
    scheduleReconnect();
  }

  function scheduleReconnect() {
    clearTimeout(S.reconnectTimer);
    const attempt = S.retry++;
    const delay = attempt === 0 ? 250 : Math.min(10000, 500 * 2 ** attempt) * (0.75 + Math.random() / 2);
    setConnection(navigator.onLine === false ? 'offline' : 'reconnecting',
      navigator.onLine === false ? 'Sem conexão' : 'Reconectando…');
    S.reconnectTimer = setTimeout(async () => {
      if (!S.key) return;
      if (attempt >= 2) {
        // Several failures in a row: make sure the key is still valid before trying again.
        try {
          await api('/api/v1/settings');
        } catch (e) {
          if (e.code === 'unauthorized') return;
        }
      }
      if (S.key) connect();
    }, delay);
  }

  /// Drops a socket that stopped answering and reconnects with `since`.
  function dropConnection() {
    const ws = S.ws;
    onDisconnect(1006);
    if (ws) {
      try { ws.close(); } catch (_) { /* already closed */ }
    }
  }

  function startPings() {
    clearInterval(S.pingTimer);
    S.pingTimer = setInterval(() => {
      if (!S.ws || S.ws.readyState !== WebSocket.OPEN) return;
      const ref = `p${++S.nextRef}`;
      clearTimeout(S.pingWait);
      S.pingWait = setTimeout(dropConnection, PING_TIMEOUT_MS);
      S.pending.set(ref, {
        resolve: () => clearTimeout(S.pingWait),
        reject: () => {},
        timer: null,
      });
      S.ws.send(JSON.stringify({ type: 'ping', ref }));
    }, PING_EVERY_MS);
  }

  // ---------------------------------------------------------------- commands

  function settle(frame) {
    const waiting = frame.ref !== undefined && S.pending.get(frame.ref);
    if (!waiting) return;
    S.pending.delete(frame.ref);
    clearTimeout(waiting.timer);
    if (frame.type === 'ack') waiting.resolve(frame);
    else waiting.reject(new Failure(frame.code || 'internal', 0));
  }

  function failPending(code) {
    for (const [, waiting] of S.pending) {
      clearTimeout(waiting.timer);
      waiting.reject(new Failure(code, 0));
    }
    S.pending.clear();
  }

  /// Sends a command on the stream, or through the REST API while the stream is down.
  function command(cmd) {
    if (S.ws && S.ws.readyState === WebSocket.OPEN && !S.loading) {
      const ref = `c${++S.nextRef}`;
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => {
          S.pending.delete(ref);
          reject(new Failure('timeout', 0));
        }, COMMAND_TIMEOUT_MS);
        S.pending.set(ref, { resolve, reject, timer });
        S.ws.send(JSON.stringify({ ...cmd, ref }));
      });
    }
    const base = `/api/v1/conversations/${encodeURIComponent(cmd.conversation)}`;
    if (cmd.type === 'reply') return api(`${base}/messages`, { method: 'POST', body: { text: cmd.text } });
    return api(`${base}/${cmd.type}`, { method: 'POST' });
  }

  function showChatError(e) {
    const node = $('chat-error');
    node.textContent = ERROR_TEXT[e && e.code] || 'Não foi possível concluir a ação.';
    node.hidden = false;
  }

  async function sendReply(event) {
    event.preventDefault();
    const box = $('reply-text');
    const text = box.value.trim();
    if (!S.open || !text) {
      box.focus();
      return;
    }
    $('chat-error').hidden = true;
    $('send').disabled = true;
    try {
      await command({ type: 'reply', conversation: S.open, text });
      if (box.value.trim() === text) box.value = '';
    } catch (e) {
      if (e.code !== 'unauthorized') showChatError(e);
    } finally {
      $('send').disabled = false;
      box.focus();
    }
  }

  async function changeState(type) {
    if (!S.open) return;
    const contact = S.open;
    $('chat-error').hidden = true;
    const button = $(type);
    button.disabled = true;
    try {
      const answer = await command({ type, conversation: contact });
      if (answer && answer.state) setState(contact, answer.state, null);
    } catch (e) {
      if (e.code !== 'unauthorized') showChatError(e);
    } finally {
      renderChatHead();
    }
  }

  // ---------------------------------------------------------------- loading

  async function reload() {
    const gen = S.gen;
    try {
      const [recent, waiting] = await Promise.all([
        api('/api/v1/conversations?limit=100'),
        api('/api/v1/conversations?state=AGUARDANDO_HUMANO&limit=500'),
      ]);
      if (gen !== S.gen) return;
      const old = S.convs;
      S.convs = new Map();
      for (const c of [...waiting.items, ...recent.items]) mergeConv(c, old.get(c.contact));
      S.nextCursor = recent.next_cursor || null;
      if (S.open) {
        await loadMessages(S.open, true).catch((e) => {
          // A conversation that cannot be loaded must not block the whole console.
          if (e.code === 'unauthorized' || e.code === 'network') throw e;
        });
      }
      if (gen !== S.gen) return;
      S.loading = false;
      const buffered = S.buffer;
      S.buffer = [];
      buffered.forEach(apply);
      renderList();
      renderChat();
    } catch (e) {
      if (e.code === 'unauthorized' || gen !== S.gen) return;
      setTimeout(() => { if (gen === S.gen && S.loading) reload(); }, 2000);
    }
  }

  function mergeConv(c, previous) {
    const conv = S.convs.get(c.contact) || {
      contact: c.contact, preview: '', unread: 0, typing: false,
    };
    if (previous) {
      conv.preview = previous.preview;
      conv.unread = previous.unread;
    }
    conv.state = c.state;
    conv.reason = c.reason;
    conv.activity = c.last_message_at || c.updated_at;
    S.convs.set(c.contact, conv);
    return conv;
  }

  async function loadMoreConversations() {
    if (!S.nextCursor) return;
    try {
      const page = await api(`/api/v1/conversations?limit=100&cursor=${encodeURIComponent(S.nextCursor)}`);
      for (const c of page.items) if (!S.convs.has(c.contact)) mergeConv(c);
      S.nextCursor = page.next_cursor || null;
      renderList();
    } catch (_) { /* the button stays; the operator may try again */ }
  }

  async function loadMessages(contact, reset) {
    let path = `/api/v1/conversations/${encodeURIComponent(contact)}/messages?limit=${PAGE}`;
    if (!reset) {
      const oldest = [...S.messages.values()].reduce((a, m) => (a && millis(a.at) <= millis(m.at) ? a : m), null);
      if (oldest) path += `&before=${encodeURIComponent(oldest.at)}`;
    }
    const page = await api(path);
    if (S.open !== contact) return;
    if (reset) S.messages = new Map();
    for (const m of page) addMessage(m, false);
    S.hasOlder = page.length === PAGE;
  }

  // ---------------------------------------------------------------- events

  function ensureConv(contact) {
    let conv = S.convs.get(contact);
    if (!conv) {
      conv = { contact, state: null, reason: null, activity: null, preview: '', unread: 0, typing: false };
      S.convs.set(contact, conv);
      api(`/api/v1/conversations/${encodeURIComponent(contact)}`)
        .then((c) => {
          if (conv.state === null) {
            conv.state = c.state;
            conv.reason = c.reason;
          }
          renderList();
          if (S.open === contact) renderChatHead();
        })
        .catch(() => {});
    }
    return conv;
  }

  function apply(e) {
    const conv = ensureConv(e.conversation);
    switch (e.type) {
      case 'message':
        conv.activity = e.at;
        conv.preview = messageText(e);
        if (S.open === e.conversation) {
          addMessage({ ...e }, true);
        } else if (e.direction === 'in') {
          conv.unread += 1;
        }
        if (e.direction === 'out') {
          conv.typing = false;
          if (S.open === e.conversation) renderTyping();
        }
        break;
      case 'state':
        setState(e.conversation, e.to, e.reason);
        break;
      case 'delivery':
        if (S.open === e.conversation) {
          const m = S.messages.get(e.id);
          if (m && advances(m.status, e.status)) {
            m.status = e.status;
            m.error = e.error;
            renderMessage(m);
          }
        }
        break;
      case 'amended':
        if (S.open === e.conversation) {
          const m = S.messages.get(e.id);
          if (m) {
            m.text = e.text;
            m.amended = { change: e.change, at: e.at };
            renderMessage(m);
          }
        }
        break;
      case 'typing':
        conv.typing = !!e.on;
        if (S.open === e.conversation) renderTyping();
        break;
      default:
        return;
    }
    renderList();
  }

  function advances(from, to) {
    if (!from) return true;
    if (from === 'failed') return false;
    return to === 'failed' || (STATUS_RANK[to] || 0) > (STATUS_RANK[from] || 0);
  }

  function setState(contact, state, reason) {
    const conv = ensureConv(contact);
    conv.state = state;
    if (reason) conv.reason = reason;
    if (S.open === contact) renderChatHead();
    renderList();
  }

  function addMessage(m, live) {
    const known = S.messages.get(m.id);
    if (known) {
      if (advances(known.status, m.status)) known.status = m.status;
      renderMessage(known);
      return;
    }
    S.messages.set(m.id, m);
    if (live) renderMessages(true);
  }

  // ---------------------------------------------------------------- rendering

  function sortedConvs() {
    return [...S.convs.values()].sort((a, b) => {
      const wa = a.state === 'AGUARDANDO_HUMANO' ? 0 : 1;
      const wb = b.state === 'AGUARDANDO_HUMANO' ? 0 : 1;
      return wa - wb || millis(b.activity) - millis(a.activity);
    });
  }

  let listQueued = false;
  function renderList() {
    if (listQueued) return;
    listQueued = true;
    queueMicrotask(() => {
      listQueued = false;
      drawList();
    });
  }

  function drawList() {
    const list = $('conversations');
    const focused = document.activeElement && document.activeElement.dataset
      ? document.activeElement.dataset.contact : undefined;
    const convs = sortedConvs();
    const items = convs.map((conv) => {
      const li = el('li');
      const button = el('button', 'conv');
      button.type = 'button';
      button.dataset.contact = conv.contact;
      button.dataset.state = conv.state || '';
      if (conv.state === 'AGUARDANDO_HUMANO') button.classList.add('waiting');
      if (S.open === conv.contact) button.setAttribute('aria-current', 'true');
      const who = el('span', 'who');
      who.append(el('span', 'number', formatContact(conv.contact)));
      if (conv.state) who.append(el('span', `badge ${conv.state}`, STATE_LABEL[conv.state] || conv.state));
      button.append(who);
      button.append(el('span', 'when', formatWhen(conv.activity)));
      const preview = conv.typing ? 'digitando…' : conv.preview;
      button.append(el('span', 'preview', preview || ''));
      const tags = el('span', 'tags');
      if (conv.unread > 0) {
        const unread = el('span', 'unread', String(conv.unread));
        unread.setAttribute('aria-label', conv.unread === 1 ? '1 mensagem nova' : `${conv.unread} mensagens novas`);
        tags.append(unread);
      }
      button.append(tags);
      button.addEventListener('click', () => openConversation(conv.contact));
      li.append(button);
      return li;
    });
    list.replaceChildren(...items);
    if (focused) {
      const again = list.querySelector(`button[data-contact="${CSS.escape(focused)}"]`);
      if (again) again.focus();
    }
    $('list-empty').hidden = convs.length > 0 || S.loading;
    $('more-conversations').hidden = !S.nextCursor;
    const waiting = convs.filter((c) => c.state === 'AGUARDANDO_HUMANO').length;
    $('waiting-count').textContent = waiting === 0 ? ''
      : waiting === 1 ? '1 aguardando atendimento' : `${waiting} aguardando atendimento`;
  }

  function renderChat() {
    const chat = $('chat');
    if (!S.open) {
      chat.hidden = true;
      $('chat-empty').hidden = false;
      return;
    }
    chat.hidden = false;
    $('chat-empty').hidden = true;
    renderChatHead();
    renderMessages(false);
    renderTyping();
  }

  function renderChatHead() {
    if (!S.open) return;
    const conv = S.convs.get(S.open) || {};
    $('chat-title').textContent = formatContact(S.open);
    const line = $('chat-state');
    const parts = [];
    if (conv.state) parts.push(el('span', `badge ${conv.state}`, STATE_LABEL[conv.state] || conv.state));
    if (conv.reason && REASON_LABEL[conv.reason]) parts.push(el('span', 'reason', `Motivo: ${REASON_LABEL[conv.reason]}`));
    line.replaceChildren(...parts);
    line.dataset.state = conv.state || '';
    $('takeover').disabled = conv.state !== 'IA_ATIVA';
    $('release').disabled = !conv.state || conv.state === 'IA_ATIVA';
  }

  function renderTyping() {
    const conv = S.convs.get(S.open);
    $('typing').textContent = conv && conv.typing ? 'Assistente digitando…' : '';
  }

  const nodes = new Map(); // message id -> <li>

  function renderMessage(m) {
    let li = nodes.get(m.id);
    if (!li) {
      li = el('li');
      nodes.set(m.id, li);
    }
    li.className = `msg ${m.direction === 'out' ? 'out' : 'in'} ${m.author || ''}`;
    li.dataset.id = m.id;
    li.dataset.author = m.author || '';
    li.dataset.status = m.status || '';
    const revoked = m.amended && m.amended.change === 'revoked';
    const text = el('p', m.text && m.text.trim() && !revoked ? 'text' : 'text media', messageText(m));
    const meta = el('p', 'meta');
    meta.append(el('span', 'author', AUTHOR_LABEL[m.author] || ''));
    if (m.amended && m.amended.change === 'edited') meta.append(el('span', 'edited', 'editada'));
    const time = el('time', null, formatWhen(m.at));
    if (m.at) time.dateTime = m.at;
    meta.append(time);
    if (m.direction === 'out' && m.status) {
      const ticks = el('span', `ticks ${m.status}`,
        m.status === 'failed' ? '!' : m.status === 'pending' ? '…' : m.status === 'sent' ? '✓' : '✓✓');
      ticks.setAttribute('role', 'img');
      ticks.setAttribute('aria-label', STATUS_LABEL[m.status] || m.status);
      ticks.title = m.status === 'failed' && m.error ? `${STATUS_LABEL.failed}: ${m.error}` : STATUS_LABEL[m.status] || '';
      meta.append(ticks);
    }
    li.replaceChildren(text, meta);
    return li;
  }

  function renderMessages(stickToBottom) {
    const box = $('messages');
    const nearBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 80;
    const sorted = [...S.messages.values()].sort((a, b) => millis(a.at) - millis(b.at));
    const list = $('message-list');
    const wanted = sorted.map(renderMessage);
    for (const [id, li] of nodes) if (!S.messages.has(id)) { li.remove(); nodes.delete(id); }
    // Appending an existing node moves it: the list ends up in `sorted` order.
    wanted.forEach((li, i) => { if (list.children[i] !== li) list.insertBefore(li, list.children[i] || null); });
    $('older').hidden = !S.hasOlder;
    if (!stickToBottom || nearBottom) box.scrollTop = box.scrollHeight;
  }

  // ---------------------------------------------------------------- navigation

  async function openConversation(contact) {
    S.open = contact;
    S.messages = new Map();
    for (const [, li] of nodes) li.remove();
    nodes.clear();
    S.hasOlder = false;
    const conv = ensureConv(contact);
    conv.unread = 0;
    $('chat-error').hidden = true;
    $('app').dataset.view = 'chat';
    renderList();
    renderChat();
    $('chat-title').focus();
    try {
      await loadMessages(contact, true);
      if (S.open === contact) renderMessages(false);
    } catch (e) {
      if (e.code !== 'unauthorized' && S.open === contact) showChatError(e);
    }
  }

  async function loadOlder() {
    const contact = S.open;
    const box = $('messages');
    const fromBottom = box.scrollHeight - box.scrollTop;
    try {
      await loadMessages(contact, false);
      if (S.open !== contact) return;
      renderMessages(true);
      box.scrollTop = box.scrollHeight - fromBottom;
    } catch (e) {
      if (e.code !== 'unauthorized') showChatError(e);
    }
  }

  function showList() {
    const contact = S.open;
    $('app').dataset.view = 'list';
    if (contact) {
      const item = $('conversations').querySelector(`button[data-contact="${CSS.escape(contact)}"]`);
      if (item) item.focus();
    }
  }

  // ---------------------------------------------------------------- wiring

  document.addEventListener('DOMContentLoaded', () => {
    $('login-form').addEventListener('submit', signIn);
    $('logout').addEventListener('click', () => signOut());
    $('reply-form').addEventListener('submit', sendReply);
    $('reply-text').addEventListener('keydown', (e) => {
      if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) sendReply(e);
    });
    $('takeover').addEventListener('click', () => changeState('takeover'));
    $('release').addEventListener('click', () => changeState('release'));
    $('older').addEventListener('click', loadOlder);
    $('more-conversations').addEventListener('click', loadMoreConversations);
    $('back').addEventListener('click', showList);
    document.addEventListener('keydown', (e) => {
      if (e.key === 'Escape' && $('app').dataset.view === 'chat') showList();
    });
    window.addEventListener('online', () => {
      if (S.key && !S.ws) {
        S.retry = 0;
        connect();
      }
    });
    window.addEventListener('offline', () => { if (S.key) setConnection('offline', 'Sem conexão'); });
    const key = storedKey();
    if (key) start(key);
    else $('api-key').focus();
  });
})();
