// Skip a Plotly.react of exactly what a plot already shows.
//
// After every zoom, dcc.Graph copies the plot's new axis range into its `figure` prop, and a new
// `figure` makes it call Plotly.react with the old data: a full redraw of what the zoom already
// drew (100-370 ms on the timeline in Chromium), run before the zoom's callback is even sent.
// It is skipped when the data are the ones last drawn, the layout is the one last drawn but for
// axis ranges (and the axis types plotly wrote back), and those ranges are the ones on screen.
(function () {
    const AXIS = /^[xy]axis[0-9]*$/;

    function same(a, b, axis) {
        if (a === b) return true;
        if (a === null || b === null || typeof a !== 'object' || typeof b !== 'object') return false;
        if (Array.isArray(a) !== Array.isArray(b)) return false;
        // What plotly writes back into an axis of gd.layout (the copy dcc.Graph sends has them).
        const keep = k => !(axis && (k === 'range' || k === 'autorange' || k === 'type'));
        const ka = Object.keys(a).filter(k => a[k] !== undefined && keep(k));
        const kb = Object.keys(b).filter(k => b[k] !== undefined && keep(k));
        if (ka.length !== kb.length) return false;
        for (const k of ka) if (!same(a[k], b[k], !axis && AXIS.test(k) && !Array.isArray(a))) return false;
        return true;
    }

    function shown(layout, gd) {     // every axis range asked for is the one on screen
        for (const k of Object.keys(layout)) {
            if (!AXIS.test(k) || !layout[k] || !layout[k].range) continue;
            const now = gd.layout[k];
            if (!now || !now.range || !!now.autorange !== !!layout[k].autorange) return false;
            if (layout[k].range.some((v, i) => v !== now.range[i])) return false;
        }
        return true;
    }

    function wrap(Plotly) {
        if (Plotly.__reactSkip) return;
        const react = Plotly.react;
        Plotly.react = function (gd, data, layout, config) {
            const fig = data && !Array.isArray(data) && typeof data === 'object' ? data : null;
            const d = fig ? fig.data : data, l = fig ? fig.layout : layout;
            const last = gd && gd.__drawn;
            if (last && gd._fullLayout && d === last.data && l && same(l, last.layout, false) && shown(l, gd)
                && (!fig || !fig.frames || !fig.frames.length)) {
                return Promise.resolve(gd);
            }
            if (gd && l) gd.__drawn = {data: d, layout: structuredClone(l)};
            return react.apply(this, arguments);
        };
        Plotly.__reactSkip = true;
    }

    // dcc.Graph loads plotly.js on demand: wrap it once it is there.
    (function wait() {
        if (window.Plotly && window.Plotly.react) wrap(window.Plotly);
        else requestAnimationFrame(wait);
    })();
})();
