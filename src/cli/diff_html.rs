//! `adsproc diff --html`: one self-contained page (no network, no external script) with the
//! summary as a table and the charts drawn by a small inline script from the report's JSON,
//! which the page carries: the deltas over time, one chart per measure, and the most affected
//! advertisers.

/// Text for HTML content and attribute values.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

pub fn render(report: &serde_json::Value) -> String {
    let s = |v: &serde_json::Value| esc(v.as_str().unwrap_or_default());
    let n = |v: &serde_json::Value| v.as_i64().unwrap_or_default();
    let total = &report["total"];
    let mut rows = String::new();
    for m in report["measures"].as_array().into_iter().flatten() {
        let field = m["field"].as_str().unwrap_or_default();
        rows += &format!(
            "<tr><th>{}</th><td>{}</td><td>{}</td><td class=\"delta\">{:+}</td></tr>\n",
            s(&m["label"]),
            n(&report["old"]["measures"][field]),
            n(&report["new"]["measures"][field]),
            n(&total[format!("delta_{field}")])
        );
    }
    // The data the script draws from; `</` is escaped so that no value can close the script.
    let data = serde_json::to_string(report).expect("serializes").replace("</", "<\\/").replace("<!--", "<\\!--");
    format!(
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>adsproc diff: {table}</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
th, td {{ padding: .25em .8em; text-align: right; border-bottom: 1px solid #ddd; }}
th:first-child, td:first-child {{ text-align: left; }}
.delta {{ font-weight: bold; }}
.chart {{ margin: 1em 0 2em; }}
.bar.up {{ fill: #2a7; }} .bar.down {{ fill: #c33; }}
.axis {{ stroke: #888; }} text {{ font-size: 11px; fill: #444; }}
</style></head>
<body>
<h1>What changes in <code>{table}</code></h1>
<p>old: <code>{old}</code> ({old_records} records) &rarr; new: <code>{new}</code> ({new_records} records)</p>
<table id="summary">
<tr><th>records</th><td colspan="3">{added} added, {removed} removed, {changed} changed, {unchanged} unchanged</td></tr>
<tr><th></th><th>old</th><th>new</th><th>&Delta;</th></tr>
{rows}</table>
<h2>The change over time</h2>
<div id="hours"></div>
<h2>Most affected advertisers</h2>
<div id="advertisers"></div>
<h2>Most affected campaigns</h2>
<table id="campaigns"></table>
<noscript>The charts need JavaScript; the same figures are in the JSON report (adsproc diff --json).</noscript>
<script id="report" type="application/json">{data}</script>
<script>
(function () {{
  const report = JSON.parse(document.getElementById('report').textContent);
  const NS = 'http://www.w3.org/2000/svg';
  const el = (name, attrs, text) => {{
    const e = document.createElementNS(NS, name);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    return e;
  }};
  const signed = v => (v > 0 ? '+' : '') + v;
  // One column per hour with a difference: up for a gain, down for a loss.
  for (const m of report.measures) {{
    const hours = report.by_hour, key = 'delta_' + m.field;
    // The zero line sits in the middle only when there are both gains and losses.
    const up = hours.some(h => h[key] > 0), down = hours.some(h => h[key] < 0);
    const W = 900, H = 200, mid = up && down ? H / 2 : (down ? 10 : H - 10), max = Math.max(1, ...hours.map(h => Math.abs(h[key])));
    const room = up && down ? mid - 10 : H - 20;
    const w = Math.max(2, Math.min(40, (W - 60) / Math.max(1, hours.length) - 2));
    const svg = el('svg', {{ id: 'chart-hours-' + m.field, class: 'chart', width: W, height: H + 30, 'data-bars': hours.length }});
    svg.appendChild(el('text', {{ x: 0, y: 12 }}, 'Δ ' + m.label + ' per hour (max |Δ| ' + max + ')'));
    svg.appendChild(el('line', {{ class: 'axis', x1: 50, x2: W, y1: mid + 15, y2: mid + 15 }}));
    hours.forEach((h, i) => {{
      const v = h[key], len = Math.abs(v) / max * room;
      const bar = el('rect', {{ class: 'bar ' + (v >= 0 ? 'up' : 'down'), x: 52 + i * (w + 2), y: v >= 0 ? mid + 15 - len : mid + 15, width: w, height: Math.max(len, 0.5), 'data-hour': h.hour, 'data-value': v }});
      bar.appendChild(el('title', {{}}, h.hour + ': ' + signed(v) + ' ' + m.label));
      svg.appendChild(bar);
    }});
    if (hours.length) {{
      svg.appendChild(el('text', {{ x: 52, y: H + 28 }}, hours[0].hour));
      svg.appendChild(el('text', {{ x: W, y: H + 28, 'text-anchor': 'end' }}, hours[hours.length - 1].hour));
    }}
    document.getElementById('hours').appendChild(svg);
  }}
  // The advertisers whose figures move most, a bar each for the first measure.
  const m = report.measures[0], key = 'delta_' + m.field, advs = report.top_advertisers;
  const max = Math.max(1, ...advs.map(a => Math.abs(a[key])));
  const svg = el('svg', {{ id: 'chart-advertisers', class: 'chart', width: 900, height: 24 * advs.length + 24, 'data-bars': advs.length }});
  svg.appendChild(el('text', {{ x: 0, y: 12 }}, 'Δ ' + m.label + ' by advertiser'));
  advs.forEach((a, i) => {{
    const v = a[key], len = Math.abs(v) / max * 500, y = 20 + i * 24;
    svg.appendChild(el('text', {{ x: 0, y: y + 14, class: 'label' }}, a.advertiser_id || '(no advertiser)'));
    const bar = el('rect', {{ class: 'bar ' + (v >= 0 ? 'up' : 'down'), x: 220, y: y, width: Math.max(len, 0.5), height: 18, 'data-advertiser': a.advertiser_id, 'data-value': v }});
    bar.appendChild(el('title', {{}}, signed(v) + ' ' + m.label));
    svg.appendChild(bar);
    svg.appendChild(el('text', {{ x: 226 + len, y: y + 14 }}, signed(v) + ' (' + (a.added + a.removed + a.changed) + ' records)'));
  }});
  document.getElementById('advertisers').appendChild(svg);
  const t = document.getElementById('campaigns');
  t.innerHTML = '<tr><th>advertiser / campaign</th>' + report.measures.map(x => '<th>Δ ' + x.label + '</th>').join('') + '<th>added</th><th>removed</th><th>changed</th></tr>';
  for (const c of report.top_campaigns) {{
    const tr = document.createElement('tr');
    const cells = [(c.advertiser_id || '-') + ' / ' + (c.campaign_id || '-'), ...report.measures.map(x => signed(c['delta_' + x.field])), c.added, c.removed, c.changed];
    for (const v of cells) {{ const td = document.createElement('td'); td.textContent = v; tr.appendChild(td); }}
    t.appendChild(tr);
  }}
  document.body.setAttribute('data-rendered', 'true');
}})();
</script>
</body></html>
"#,
        table = s(&report["table"]),
        old = s(&report["old"]["source"]),
        new = s(&report["new"]["source"]),
        old_records = n(&report["old"]["records"]),
        new_records = n(&report["new"]["records"]),
        added = n(&total["added"]),
        removed = n(&total["removed"]),
        changed = n(&total["changed"]),
        unchanged = n(&total["unchanged"]),
    )
}
