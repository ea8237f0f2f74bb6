package org.clientregistry.hapi;

import jakarta.servlet.Filter;
import jakarta.servlet.FilterChain;
import jakarta.servlet.ServletException;
import jakarta.servlet.ServletOutputStream;
import jakarta.servlet.ServletRequest;
import jakarta.servlet.ServletResponse;
import jakarta.servlet.WriteListener;
import jakarta.servlet.http.HttpServletResponse;
import jakarta.servlet.http.HttpServletResponseWrapper;
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.OutputStreamWriter;
import java.io.PrintWriter;
import java.nio.charset.Charset;
import java.nio.charset.StandardCharsets;

/**
 * Sends each FHIR response whole, with a {@code Content-Length}, instead of as it is written.
 *
 * <p>HAPI's JSON encoder flushes the servlet writer after almost every property, and each flush became one
 * HTTP chunk: a candidate search of 34 Patients was answered in over a thousand chunks of 10–60 bytes. The
 * client registry's mediator parsed ≈ 280 chunks per submitted record during a bulk load (a fifth of its CPU
 * in a profile), and the server wrote each one to the socket. Buffered here, a response is one write. The
 * registry's responses are small (the largest, a page of 1,000 resources, a few MB), so holding one in
 * memory is cheap.
 */
public class WholeResponseFilter implements Filter {

	@Override
	public void doFilter(ServletRequest request, ServletResponse response, FilterChain chain)
			throws IOException, ServletException {
		if (!(response instanceof HttpServletResponse http)) {
			chain.doFilter(request, response);
			return;
		}
		Whole whole = new Whole(http);
		chain.doFilter(request, whole);
		whole.send();
	}

	/** The response, its body kept in memory until {@link #send()}; flushes do nothing before that. */
	static final class Whole extends HttpServletResponseWrapper {
		private final ByteArrayOutputStream body = new ByteArrayOutputStream(16 * 1024);
		private ServletOutputStream stream;
		private PrintWriter writer;

		Whole(HttpServletResponse response) {
			super(response);
		}

		@Override
		public ServletOutputStream getOutputStream() {
			if (writer != null) {
				throw new IllegalStateException("getWriter() was called already");
			}
			if (stream == null) {
				stream = new ServletOutputStream() {
					@Override
					public void write(int b) {
						body.write(b);
					}

					@Override
					public void write(byte[] bytes, int offset, int length) {
						body.write(bytes, offset, length);
					}

					@Override
					public boolean isReady() {
						return true;
					}

					@Override
					public void setWriteListener(WriteListener listener) {
						throw new UnsupportedOperationException("the response is sent whole");
					}
				};
			}
			return stream;
		}

		@Override
		public PrintWriter getWriter() {
			if (stream != null) {
				throw new IllegalStateException("getOutputStream() was called already");
			}
			if (writer == null) {
				String encoding = getCharacterEncoding();
				Charset charset = encoding == null ? StandardCharsets.ISO_8859_1 : Charset.forName(encoding);
				writer = new PrintWriter(new OutputStreamWriter(body, charset), false);
			}
			return writer;
		}

		@Override
		public void flushBuffer() {
			// sent whole by send()
		}

		@Override
		public void setContentLength(int length) {
			// set by send() from the body
		}

		@Override
		public void setContentLengthLong(long length) {
			// set by send() from the body
		}

		@Override
		public void resetBuffer() {
			super.resetBuffer();
			body.reset();
		}

		@Override
		public void reset() {
			super.reset();
			body.reset();
			stream = null;
			writer = null;
		}

		void send() throws IOException {
			if (writer != null) {
				writer.flush();
			}
			HttpServletResponse response = (HttpServletResponse) getResponse();
			if (body.size() == 0) {
				return;
			}
			if (!response.isCommitted()) {
				response.setContentLengthLong(body.size());
			}
			ServletOutputStream out = response.getOutputStream();
			body.writeTo(out);
			out.flush();
		}
	}
}
