// "Share a snapshot": saves the current notebook, then asks the nbpool gateway for a link to a
// read-only copy of it and shows that link.
//
// The gateway's endpoint is the page config option `nbpoolShareUrl` (start-notebook.sh sets it
// from NBPOOL_SHARE_URL). Without it, as outside nbpool, the command is hidden and disabled.
//
// The request:  POST <nbpoolShareUrl>  Authorization: token <the server's token>
//               {"path": "<notebook path relative to the server root>"}
// answered by   201 {"id", "view_url", "remix_url", "expires_at", "delete_token"}
// or an error   4xx/5xx {"detail": "..."}.
// The gateway is another origin: a CORS request, without cookies.

import { Clipboard, Dialog, Notification, showDialog } from '@jupyterlab/apputils';
import { PageConfig, PathExt } from '@jupyterlab/coreutils';
import { INotebookTracker } from '@jupyterlab/notebook';
import { ServerConnection } from '@jupyterlab/services';
import { shareIcon } from '@jupyterlab/ui-components';
import { Widget } from '@lumino/widgets';

const COMMAND = 'nbpool:share-snapshot';
const SHARE_URL_OPTION = 'nbpoolShareUrl';

// The gateway copies the notebook out of the sandbox before it answers; past this the
// visitor is told to try again rather than left waiting.
const TIMEOUT_SECONDS = 60;

/** A failure to share, with a message meant for the visitor. */
class ShareError extends Error {}

const plugin = {
  id: '@nbpool/share-snapshot:plugin',
  description: 'Share a read-only snapshot of the current notebook through the nbpool gateway.',
  autoStart: true,
  requires: [INotebookTracker],
  activate: (app, tracker) => {
    const shareUrl = configuredShareUrl();
    let busy = false;
    // The File menu acts on the notebook the visitor is looking at; a toolbar button on the
    // notebook it belongs to (a click in a panel makes it the current one first).
    const notebookInFront = () =>
      tracker.currentWidget !== null && tracker.currentWidget === app.shell.currentWidget;

    app.commands.addCommand(COMMAND, {
      label: 'Share a snapshot',
      caption: 'Save this notebook and get a link to a read-only copy of it',
      icon: shareIcon,
      isVisible: () => shareUrl !== null,
      isEnabled: args =>
        shareUrl !== null &&
        !busy &&
        (args.toolbar ? tracker.currentWidget !== null : notebookInFront()),
      execute: async () => {
        const panel = tracker.currentWidget;
        if (shareUrl === null || busy || panel === null) {
          return;
        }
        busy = true;
        app.commands.notifyCommandChanged(COMMAND);
        try {
          await shareSnapshot(app, panel, shareUrl);
        } finally {
          busy = false;
          app.commands.notifyCommandChanged(COMMAND);
        }
      }
    });
  }
};

export default plugin;

/** The share endpoint from the page config; null if there is none, or it is no web address. */
function configuredShareUrl() {
  const value = PageConfig.getOption(SHARE_URL_OPTION);
  if (value === '') {
    return null;
  }
  const url = webUrl(value);
  if (url === null) {
    console.warn(
      `nbpool: ignoring page config ${SHARE_URL_OPTION}=${JSON.stringify(value)}: not an http(s) URL`
    );
  }
  return url;
}

async function shareSnapshot(app, panel, shareUrl) {
  try {
    await panel.context.save();
  } catch {
    // The document context has already told the visitor why (or they cancelled).
    return;
  }
  const path = app.serviceManager.contents.localPath(panel.context.path);
  const name = PathExt.basename(path);
  const done = noticeWhileWaiting(`Sharing a snapshot of ${name}…`);
  let snapshot;
  let failure = null;
  try {
    snapshot = await requestSnapshot(shareUrl, ServerConnection.makeSettings().token, path);
  } catch (err) {
    failure = err instanceof ShareError ? err.message : `Unexpected error: ${err}`;
  } finally {
    done();
  }
  if (failure !== null) {
    await showDialog({
      title: 'Could not share the snapshot',
      body: new Widget({ node: element('p', { class: 'nbpool-ShareError' }, failure) }),
      buttons: [Dialog.okButton({ label: 'Close' })]
    });
    return;
  }
  await showDialog({
    title: 'Snapshot shared',
    body: new Widget({ node: sharedBody(snapshot, name) }),
    buttons: [Dialog.okButton({ label: 'Close' })]
  });
}

/**
 * Show an in-progress notification if the wait lasts over a second; returns the function that
 * ends it. Not at once: JupyterLab makes toasts asynchronously, and one dismissed right after it
 * was raised can stay on screen.
 */
function noticeWhileWaiting(message) {
  let id = null;
  const timer = setTimeout(() => {
    id = Notification.emit(message, 'in-progress', { autoClose: false });
  }, 1000);
  return () => {
    clearTimeout(timer);
    if (id !== null) {
      Notification.dismiss(id);
    }
  };
}

/** POST the notebook's path to the gateway; the snapshot's links, or a ShareError. */
async function requestSnapshot(shareUrl, token, path) {
  const headers = { 'Content-Type': 'application/json' };
  if (token) {
    headers['Authorization'] = `token ${token}`;
  }
  let response;
  let answer = null;
  try {
    response = await fetch(shareUrl, {
      method: 'POST',
      mode: 'cors',
      credentials: 'omit',
      cache: 'no-store',
      headers,
      body: JSON.stringify({ path }),
      signal: AbortSignal.timeout(TIMEOUT_SECONDS * 1000)
    });
    answer = await response.json().catch(() => null);
  } catch (err) {
    if (err.name === 'TimeoutError') {
      throw new ShareError(
        `The share service did not answer within ${TIMEOUT_SECONDS} seconds. Try again later.`
      );
    }
    // A refused connection and a failed CORS check look the same from here.
    throw new ShareError(
      `The share service could not be reached (${err.message}). Try again later.`
    );
  }
  if (!response.ok) {
    const status = `${response.status} ${response.statusText}`.trim();
    throw new ShareError(errorDetail(answer) || `The share service answered ${status}.`);
  }
  const snapshot = parseSnapshot(answer, shareUrl);
  if (snapshot === null) {
    throw new ShareError('The share service sent an answer without a link to the snapshot.');
  }
  return snapshot;
}

/** The text of an error answer for the visitor: `detail`, a string or FastAPI's list of problems. */
function errorDetail(answer) {
  const detail = answer && answer.detail;
  if (typeof detail === 'string') {
    return detail;
  }
  if (Array.isArray(detail)) {
    return detail.map(item => (item && item.msg) || JSON.stringify(item)).join('; ');
  }
  return '';
}

function parseSnapshot(answer, shareUrl) {
  if (!answer || typeof answer !== 'object') {
    return null;
  }
  const viewUrl = webUrl(answer.view_url, shareUrl);
  if (viewUrl === null) {
    return null;
  }
  return {
    viewUrl,
    remixUrl: webUrl(answer.remix_url, shareUrl),
    expiresAt: typeof answer.expires_at === 'string' ? new Date(answer.expires_at) : null
  };
}

/** An absolute http(s) URL (relative ones resolved against base), or null: it goes into an href. */
function webUrl(value, base) {
  if (typeof value !== 'string' || value === '') {
    return null;
  }
  try {
    const url = new URL(value, base);
    return url.protocol === 'http:' || url.protocol === 'https:' ? url.href : null;
  } catch {
    return null;
  }
}

function sharedBody(snapshot, name) {
  const copy = element(
    'button',
    { type: 'button', class: 'jp-Button jp-mod-styled nbpool-ShareDialog-copy' },
    'Copy'
  );
  copy.addEventListener('click', async () => {
    await copyText(snapshot.viewUrl);
    copy.textContent = 'Copied';
    setTimeout(() => {
      copy.textContent = 'Copy';
    }, 2000);
  });
  const body = element(
    'div',
    { class: 'nbpool-ShareDialog' },
    element('p', {}, `Anyone with this link can view ${name} as it was saved just now:`),
    element(
      'div',
      { class: 'nbpool-ShareDialog-row' },
      link(snapshot.viewUrl, 'nbpool-ShareDialog-viewLink'),
      copy
    )
  );
  const expires = snapshot.expiresAt;
  if (expires !== null && !Number.isNaN(expires.getTime())) {
    const when = expires.toLocaleString(undefined, { dateStyle: 'medium', timeStyle: 'short' });
    body.append(
      element(
        'p',
        { class: 'nbpool-ShareDialog-expires' },
        'The link works until ',
        element('time', { datetime: expires.toISOString() }, when),
        ` (${fromNow(expires)}).`
      )
    );
  }
  if (snapshot.remixUrl !== null) {
    body.append(
      element(
        'p',
        { class: 'nbpool-ShareDialog-remix' },
        'To let someone run their own copy, send the remix link: ',
        link(snapshot.remixUrl, 'nbpool-ShareDialog-remixLink')
      )
    );
  }
  return body;
}

function link(url, className) {
  return element(
    'a',
    { class: className, href: url, target: '_blank', rel: 'noopener noreferrer' },
    url
  );
}

/** "in 7 days", "in 3 hours": how far off a time is, in the visitor's language. */
function fromNow(when) {
  const format = new Intl.RelativeTimeFormat(undefined, { numeric: 'auto' });
  const minutes = Math.round((when.getTime() - Date.now()) / 60000);
  if (Math.abs(minutes) < 90) {
    return format.format(minutes, 'minute');
  }
  const hours = Math.round(minutes / 60);
  if (Math.abs(hours) < 36) {
    return format.format(hours, 'hour');
  }
  return format.format(Math.round(hours / 24), 'day');
}

async function copyText(text) {
  // The asynchronous clipboard API exists only in secure contexts (https, localhost); a
  // sandbox served over plain http elsewhere falls back to a synthetic copy event.
  if (window.isSecureContext && navigator.clipboard) {
    try {
      await navigator.clipboard.writeText(text);
      return;
    } catch {
      // Denied: try the other way.
    }
  }
  Clipboard.copyToSystem(text);
}

/** A DOM element with attributes and children (strings become text, never markup). */
function element(tag, attributes, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    node.setAttribute(name, value);
  }
  node.append(...children);
  return node;
}
