// dcc.Graph loads plotly.js on demand from window._dashPlotlyJSURL, which the Dash renderer sets
// to plotly.py's full bundle (4.8 MB, ~1.5 s to evaluate in Chromium here, most of a graph page's
// first paint). Use the dashboard's own bundle of the five trace types it draws instead (1.6 MB,
// ~0.3 s; see dashboards/plotly_bundle/README.md), and start loading it at once, asynchronously:
// it then evaluates while the renderer waits for the server's first callbacks, and is there
// (window.Plotly) when the first graph mounts.
(function () {
    const src = (document.currentScript && document.currentScript.src) || '';
    const url = src.replace(/plotly_bundle\.js(\?.*)?$/, 'vendor/plotly-sohuprof.min.js');
    if (url === src) return;
    Object.defineProperty(window, '_dashPlotlyJSURL', {configurable: true, get: () => url, set: () => {}});
    if (!window.Plotly) {
        const script = document.createElement('script');
        script.src = url;
        script.async = true;
        document.head.appendChild(script);
    }
})();
