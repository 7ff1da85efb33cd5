//! One server-sent event stream a page holds open: the browser's `EventSource`, at most one at a time per holder.
//! The playground's run stream and the job page's training events both use it. A no-op on the server.

/// The open stream, if any. Clones share it.
#[derive(Clone)]
#[cfg_attr(not(feature = "hydrate"), derive(Default))]
pub struct EventStream {
    // The browser runs everything on one thread; SendWrapper satisfies the signals' Send bounds.
    #[cfg(feature = "hydrate")]
    inner: send_wrapper::SendWrapper<std::rc::Rc<std::cell::RefCell<Option<web_sys::EventSource>>>>,
}

#[cfg(feature = "hydrate")]
impl Default for EventStream {
    fn default() -> Self {
        Self { inner: send_wrapper::SendWrapper::new(Default::default()) }
    }
}

impl EventStream {
    /// Closes the stream open before and opens `url`. Each message's data goes to `on_message`; the first of the
    /// events named in `closing` closes the stream and goes to `on_close` by name. An `error` left out of `closing`
    /// lets the browser reconnect, as `EventSource` does. False when the browser refused the URL.
    #[cfg(feature = "hydrate")]
    pub fn open(
        &self,
        url: &str,
        on_message: impl Fn(&str) + 'static,
        closing: &[&'static str],
        on_close: impl Fn(&'static str) + 'static,
    ) -> bool {
        use wasm_bindgen::prelude::*;
        use wasm_bindgen::JsCast;
        self.close();
        let Ok(es) = web_sys::EventSource::new(url) else { return false };
        let message = Closure::<dyn FnMut(web_sys::MessageEvent)>::new(move |ev: web_sys::MessageEvent| {
            if let Some(data) = ev.data().as_string() {
                on_message(&data);
            }
        });
        es.set_onmessage(Some(message.as_ref().unchecked_ref()));
        message.forget();
        let on_close = std::rc::Rc::new(on_close);
        for &name in closing {
            let (es2, on_close) = (es.clone(), on_close.clone());
            let done = Closure::<dyn FnMut(web_sys::Event)>::new(move |_| {
                es2.close();
                on_close(name);
            });
            let _ = es.add_event_listener_with_callback(name, done.as_ref().unchecked_ref());
            done.forget();
        }
        *self.inner.borrow_mut() = Some(es);
        true
    }

    /// On the server nothing is opened.
    #[cfg(not(feature = "hydrate"))]
    pub fn open(
        &self,
        _url: &str,
        _on_message: impl Fn(&str) + 'static,
        _closing: &[&'static str],
        _on_close: impl Fn(&'static str) + 'static,
    ) -> bool {
        false
    }

    /// Closes the stream, if one is open (a run's generations are then cancelled by the server).
    pub fn close(&self) {
        #[cfg(feature = "hydrate")]
        if let Some(es) = self.inner.borrow_mut().take() {
            es.close();
        }
    }
}
