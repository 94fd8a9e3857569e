// Keyboard zoom and pan on the timeline, as in Perfetto: W/S zoom in/out around the middle,
// A/D pan a quarter of the view. The relayout goes through Dash like a drag does.
document.addEventListener('keydown', function (event) {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const target = event.target;
    if (target && (target.tagName === 'INPUT' || target.tagName === 'TEXTAREA' || target.isContentEditable)) return;
    const key = (event.key || '').toLowerCase();
    if (!['w', 'a', 's', 'd'].includes(key)) return;
    const plot = document.querySelector('#timeline .js-plotly-plot');
    if (!plot || !plot._fullLayout || !window.Plotly) return;
    const [lo, hi] = plot._fullLayout.xaxis.range;
    const span = hi - lo, mid = (lo + hi) / 2;
    const range = {w: [mid - span / 4, mid + span / 4], s: [mid - span, mid + span],
                   a: [lo - span / 4, hi - span / 4], d: [lo + span / 4, hi + span / 4]}[key];
    event.preventDefault();
    window.Plotly.relayout(plot, {'xaxis.range[0]': range[0], 'xaxis.range[1]': range[1]});
});
