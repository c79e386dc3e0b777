"""The visitor's pages: landing, waiting (and no vacancy), ended, admin. Self-contained HTML.

Everything a page needs is inline (no fonts, scripts or styles from anywhere), so pages work
offline and behind strict networks. Plain semantic HTML that reads on a phone and works from the
keyboard; scripts only add live updates on top.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
from typing import Any

__all__ = ["admin_page", "content_security_policy", "ended_page", "landing_page", "login_page", "waiting_page"]

_CSS = """
:root{--fg:#1b1b1b;--bg:#fff;--muted:#5b5b5b;--accent:#c4500f;--line:#ddd}
@media (prefers-color-scheme:dark){:root{--fg:#eee;--bg:#161616;--muted:#aaa;--accent:#ff9a55;--line:#333}}
*{box-sizing:border-box}
body{font:1.05rem/1.55 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);background:var(--bg);
margin:0 auto;max-width:46rem;padding:1.5rem 1rem 3rem}
h1{font-size:1.8rem;line-height:1.2;margin:.5rem 0 1rem}
a{color:var(--accent)}
.button,button{display:inline-block;min-height:2.75rem;padding:.6rem 1.3rem;border:0;border-radius:.45rem;
background:var(--accent);color:#fff;font:inherit;font-weight:600;text-decoration:none;cursor:pointer}
button.secondary{background:transparent;color:var(--accent);border:1px solid var(--accent)}
:focus-visible{outline:3px solid #2a7ae2;outline-offset:2px}
select,input{font:inherit;min-height:2.75rem;padding:.3rem .5rem;max-width:100%}
.muted{color:var(--muted)}
.steps{list-style:none;padding:0;display:flex;gap:.5rem;flex-wrap:wrap}
.steps li{padding:.25rem .7rem;border:1px solid var(--line);border-radius:1rem;color:var(--muted)}
.steps li.on{border-color:var(--accent);color:var(--fg);font-weight:600}
progress{width:100%;height:.6rem}
table{border-collapse:collapse;width:100%;font-size:.95rem}
th,td{text-align:left;padding:.35rem .5rem;border-bottom:1px solid var(--line);vertical-align:top}
.scroll{overflow-x:auto}
code{font-size:.9em}
"""


_SCRIPT_HASHES: list[str] = []


def _hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def _script(js: str) -> str:
    """A page script, allowed by its hash in the pages' Content-Security-Policy.

    Scripts are constants: what a page knows at render time goes into its JSON data block
    (``_page(data=...)``), never into the script, so the policy allows these and nothing else.
    """
    _SCRIPT_HASHES.append(_hash(js))
    return js


def content_security_policy(form_targets: str = "") -> str:
    """The policy of every page the gateway and the admin serve: only their own scripts and
    style, requests only to their own origin, forms to it (and, redirected, to
    ``form_targets``: the sandboxes a launch opens), never inside a frame."""
    return "; ".join([
        "default-src 'none'",
        "script-src " + " ".join(sorted(set(_SCRIPT_HASHES))),
        f"style-src {_hash(_CSS)}",
        "img-src 'self' data:",
        "connect-src 'self'",
        f"form-action 'self'{' ' + form_targets if form_targets else ''}",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    ])


def _page(title: str, body: str, *, head: str = "", script: str = "", data: Any = None) -> str:
    """A whole page; ``data`` (JSON) is what its script reads from ``#nbpool-data``."""
    block = "" if data is None else f'<script type="application/json" id="nbpool-data">{_json(data)}</script>'
    js = f"<script>{script}</script>" if script else ""
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)} · nbpool</title><style>{_CSS}</style>{head}</head>"
        f"<body><main>{body}</main>{block}{js}</body></html>"
    )


def _json(value: Any) -> str:
    """JSON safe to put inside a <script> element."""
    return json.dumps(value).replace("</", "<\\/").replace("<!--", "<\\u0021--")


def landing_page(profiles: dict[str, str], default: str, idle_minutes: int) -> str:
    """``/``: what this is, a Launch button, a choice of profile, live availability."""
    choice = ""
    if len(profiles) > 1:
        options = "".join(
            f'<option value="{html.escape(name)}"{" selected" if name == default else ""}>'
            f"{html.escape(name)}: {html.escape(desc)}</option>"
            for name, desc in profiles.items()
        )
        choice = f'<p><label for=profile>Environment</label><br><select id=profile name=profile>{options}</select></p>'
    body = f"""
<h1>Your own Jupyter server, right now</h1>
<p>Launch gets you a temporary JupyterLab in a second or two: nothing to install, no account.
It is thrown away when you leave (after {idle_minutes} minutes without activity), so download
anything you want to keep.</p>
<form action="/spawn" method="get">{choice}<button type=submit class=button id=launch>Launch</button></form>
<p id=availability class=muted aria-live=polite></p>
<details><summary>For programs and authors</summary>
<p>Link to <code>/spawn/lab/tree/&lt;notebook&gt;</code> to open a notebook directly. Programs can ask for a server
with <code>POST /sessions</code>; the API is described at <a href="/docs">/docs</a>.</p></details>
"""
    return _page("Launch", body, script=_LANDING_JS)


_LANDING_JS = _script("""
async function availability(){
  const el=document.getElementById('availability');
  try{
    const s=await (await fetch('/api/stats',{cache:'no-store'})).json();
    el.textContent = s.available>0 ? `${s.available} server${s.available==1?'':'s'} ready now.`
      : s.healthy_spawners==0 ? 'The service is not accepting launches at the moment.'
      : s.starting>0 ? 'Servers are starting: you may wait a few seconds.'
      : 'All servers are busy: you will wait in line for the next free one.';
  }catch(e){ el.textContent=''; }
}
availability(); setInterval(availability, 3000);
""")


def waiting_page(ticket_id: str, state: dict[str, Any], full: bool) -> str:
    """The page a visitor waits on: live progress over server-sent events, then the redirect."""
    title = "No vacancy" if full else "Starting your server"
    fallback = f'<noscript><meta http-equiv="refresh" content="3;url=/queue/{html.escape(ticket_id)}"></noscript>'
    body = f"""
<h1 id=title>{title}</h1>
<p id=status aria-live=polite>{html.escape(_describe(state))}</p>
<progress id=bar aria-label="progress"></progress>
<ol class=steps aria-hidden=true><li id=s-queued>In line</li><li id=s-starting>Starting</li><li id=s-ready>Ready</li></ol>
<p class=muted>Keep this page open: you keep your place in line, and it opens your server by itself.
<a href="/queue/{html.escape(ticket_id)}">Check now</a>.</p>
"""
    return _page(title, body, head=fallback, script=_WAITING_JS, data={"state": state, "ticket": ticket_id})


_WAITING_JS = _script("""
const {state: first, ticket} = JSON.parse(document.getElementById('nbpool-data').textContent);
function show(s){
  document.getElementById('status').textContent=describe(s);
  document.getElementById('title').textContent = s.state=='full' ? 'No vacancy' : s.state=='ready' ? 'Ready' : s.state=='failed' ? 'Your server could not be prepared' : 'Starting your server';
  const step = s.state=='ready' ? 'ready' : (s.state=='starting' || (s.state!='full' && s.position<=1)) ? 'starting' : 'queued';
  for (const id of ['queued','starting','ready']) document.getElementById('s-'+id).className = id==step ? 'on' : '';
  if (s.state=='ready' && s.url) { location.replace(s.url); }
}
show(first);
const events=new EventSource('/queue/'+encodeURIComponent(ticket)+'/events');
events.onmessage=(e)=>{ const s=JSON.parse(e.data); show(s); if (s.state=='ready' || s.state=='failed') events.close(); };
function describe(s){
  const eta = s.estimate_s!=null ? ` About ${s.estimate_s<60 ? s.estimate_s+' s' : Math.round(s.estimate_s/60)+' min'} to go.` : '';
  if (s.state=='ready') return 'Your server is ready: opening it now.';
  if (s.state=='failed') return s.message;
  if (s.state=='full') return `All servers are in use. You are number ${s.position} in line; a server frees up when someone leaves.`+eta;
  if (s.position>1) return `You are number ${s.position} in line.`+eta;
  return 'Your server is starting.'+eta;
}
""")


def _describe(state: dict[str, Any]) -> str:
    """The same words as the page's script, for the first paint and for pages without scripts."""
    eta = ""
    if state.get("estimate_s") is not None:
        secs = state["estimate_s"]
        eta = f" About {secs} s to go." if secs < 60 else f" About {round(secs / 60)} min to go."
    if state["state"] == "ready":
        return "Your server is ready: opening it now."
    if state["state"] == "failed":
        return str(state["message"])
    if state["state"] == "full":
        return (f"All servers are in use. You are number {state['position']} in line; "
                "a server frees up when someone leaves." + eta)
    if state["position"] > 1:
        return f"You are number {state['position']} in line." + eta
    return "Your server is starting." + eta


#: Why a server ended, for its visitor, by ending reason (others get the general words).
_WHY = {
    "host.lost": "The machine it ran on stopped answering, so it was ended.",
    "idle": "It was idle for a while.",
    "max_age": "It reached its maximum age.",
}


def ended_page(again: str, reason: str | None = None) -> str:
    """An old link to a server that has ended (``reason``: its ending reason, if still known)."""
    why = _WHY.get(reason or "", "Temporary servers end when they have been idle for a while, or reach their maximum age.")
    body = f"""
<h1>This server has ended</h1>
<p>{html.escape(why)} Anything saved in it is gone.</p>
<p><a class=button href="{html.escape(again)}" id=again>Start a new server</a></p>
<p class=muted>It opens the same page in a fresh server.</p>
"""
    return _page("Server ended", body)


def login_page(error: str = "") -> str:
    """The admin login form."""
    message = f'<p role=alert><strong>{html.escape(error)}</strong></p>' if error else ""
    body = f"""
<h1>nbpool admin</h1>{message}
<form method=post action="/admin/login">
<p><label for=token>Admin token</label><br><input id=token name=token type=password autocomplete=current-password required autofocus></p>
<p><button type=submit>Sign in</button></p></form>
"""
    return _page("Admin", body)


def admin_page(csrf: str) -> str:
    """The admin page: pool per host, live sessions, recent events, end and drain buttons.

    ``csrf`` is the admin session's CSRF token: every change the page asks for carries it.
    """
    body = f"""
<h1>nbpool admin</h1>
<p id=summary aria-live=polite class=muted>Loading…</p>
<p><button id=drain class=secondary type=button>Drain the pool</button>
<span class=muted id=drain-help>Ends warm servers and starts no new ones; live sessions go on.</span></p>
<h2>Pool per host</h2>
<div class=scroll><table><thead><tr><th>Spawner</th><th>Profile</th><th>Healthy</th><th>Warm</th><th>Starting</th>
<th>In use</th><th>Capacity</th></tr></thead><tbody id=pool></tbody></table></div>
<h2>Live sessions</h2>
<div class=scroll><table><thead><tr><th>Session</th><th>Profile</th><th>Host</th><th>Age</th><th>Last activity</th>
<th>Client</th><th></th></tr></thead><tbody id=sessions></tbody></table></div>
<h2>Recent events</h2>
<div class=scroll><table><thead><tr><th>Time</th><th>Event</th><th>Sandbox</th><th>Cause</th></tr></thead>
<tbody id=events></tbody></table></div>
<form method=post action="/admin/logout"><input type=hidden name=csrf value="{html.escape(csrf)}">
<p><button class=secondary type=submit>Sign out</button></p></form>
"""
    return _page("Admin", body, script=_ADMIN_JS, data={"csrf": csrf})


_ADMIN_JS = _script("""
const csrf=JSON.parse(document.getElementById('nbpool-data').textContent).csrf;
const ago=(s)=> s==null ? '-' : s<120 ? Math.round(s)+' s' : s<7200 ? Math.round(s/60)+' min' : (s/3600).toFixed(1)+' h';
function row(cells, extra){ const tr=document.createElement('tr');
  for (const c of cells){ const td=document.createElement('td'); td.textContent=c; tr.appendChild(td); }
  if (extra){ const td=document.createElement('td'); td.appendChild(extra); tr.appendChild(td); } return tr; }
async function post(url, body){ const r=await fetch(url,{method:'POST',headers:{'Content-Type':'application/json','X-CSRF-Token':csrf},
  body:JSON.stringify(body||{}),credentials:'same-origin'}); if(!r.ok) alert((await r.json()).detail||r.status); refresh(); }
let draining=false;
document.getElementById('drain').onclick=()=>post('/admin/api/drain',{draining:!draining});
async function refresh(){
  let s; try{ const r=await fetch('/admin/api/state',{cache:'no-store',credentials:'same-origin'});
    if(r.status==401){ location.href='/admin'; return; } s=await r.json(); }catch(e){ return; }
  draining=s.draining;
  document.getElementById('drain').textContent = draining ? 'Resume launches' : 'Drain the pool';
  document.getElementById('summary').textContent = `${s.sessions.length} live session(s), ${s.available} warm, `
    + `${s.spawners.length} spawner(s)` + (draining ? ' — DRAINING' : '') + `; updated ${new Date().toLocaleTimeString()}`;
  const pool=document.getElementById('pool'); pool.replaceChildren();
  for (const b of s.spawners) for (const [name,c] of Object.entries(b.pools))
    pool.appendChild(row([b.id,name,b.healthy?'yes':'no: '+b.reason,c.warm,c.starting,c.claimed,b.total+'/'+b.capacity]));
  const sessions=document.getElementById('sessions'); sessions.replaceChildren();
  for (const x of s.sessions){ const b=document.createElement('button'); b.type='button'; b.className='secondary';
    b.textContent='End'; b.setAttribute('aria-label','End session '+x.id);
    b.onclick=()=>{ if(confirm('End session '+x.id+'?')) post('/admin/api/sessions/'+x.id+'/end'); };
    sessions.appendChild(row([x.id,x.profile,x.host,ago(x.age_s),ago(x.idle_s)+' ago',x.owner||'-'], b)); }
  const events=document.getElementById('events'); events.replaceChildren();
  for (const e of s.events) events.appendChild(row([new Date(e.time*1000).toLocaleTimeString(),e.type,e.sandbox_id||'-',e.cause||'']));
}
refresh(); setInterval(refresh, 2000);
""")
